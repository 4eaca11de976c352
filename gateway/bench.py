"""``earmark bench gateway``: merge throughput against a bare paho subscriber, same run.

Method (identical for every consumer): the consumer's persistent session subscribes to the
shared subscription and goes offline; the same N messages are published into the broker's
queue for it; the consumer reconnects and we time the drain, from the first message handled
to the last (the bare subscriber only counts, with automatic PUBACKs; the gateway validates,
merges and commits, then acks). Medians over rounds. Two instances on PostgreSQL run as two
``earmark gateway`` processes; their rate comes from the commit times in ``em_seen``, and the
proof of no double counting from the row counts, each instance's own merged count and the
exact expected profile score. Latency: messages published at a steady pace to a running
gateway (SQLite), publish → commit of the merge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from sqlalchemy import create_engine, func, select, text
from tqdm import tqdm

from earmark.endpoint import BrokerConfig
from earmark.errors import EarmarkError
from earmark.gateway import profiles
from earmark.gateway.broker import LocalBroker
from earmark.gateway.merge import MergeConfig
from earmark.gateway.service import TOPICS, Gateway, GatewayConfig
from earmark.gateway.store import open_engine, seen
from earmark.gateway.validate import Checks
from earmark.wire import SignalBatch, Tag

DEVICES = ("bench-dev-01", "bench-dev-02", "bench-dev-03", "bench-dev-04")
TAGS = ("100", "101", "102", "103", "104")
BASE = 480_000 * 3600
CFG = MergeConfig(half_life_s=36500 * 86400.0, cap=1e12, max_batches_per_window=4)


def _taxonomy(workdir: Path) -> Path:
    nodes = [
        {"id": t, "name": f"Bench {t}", "parent": None, "tier": 1, "tier1": f"Bench {t}"}
        | {"targetable": True, "sensitive": None}
        for t in TAGS
    ]
    path = workdir / "taxonomy.json"
    path.write_text(json.dumps({"version": "bench-1", "nodes": nodes}))
    return path


def messages(n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        seq = i // len(DEVICES) + 1
        b = SignalBatch(DEVICES[i % len(DEVICES)], seq, "bench-1", "m1", BASE + 3600 * seq, 3600,
                        "US", tuple(Tag(t, 0.5) for t in TAGS[: 1 + i % 3]))  # fmt: skip
        out.append((b.topic, b.to_bytes()))
    return out


def _client(url: str, client_id: str, manual: bool = False) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5, manual_ack=manual
    )
    b = BrokerConfig.from_url(url)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect(b.host, b.port, clean_start=False, properties=props)
    return c


def publish(url: str, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    c.max_inflight_messages_set(500)
    b = BrokerConfig.from_url(url)
    c.connect(b.host, b.port)
    c.loop_start()
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for i in infos:
        i.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def create_session(url: str, client_id: str) -> None:
    """Subscribe once and leave: the broker queues for this session while it is away."""
    c = _client(url, client_id)
    done = threading.Event()
    c.on_subscribe = lambda *_: done.set()
    c.loop_start()
    c.subscribe([(t, mqtt.SubscribeOptions(qos=1)) for t in TOPICS])
    if not done.wait(10):
        raise EarmarkError("the bench broker did not confirm the subscription")
    c.disconnect()
    c.loop_stop()


def drop_session(url: str, client_id: str) -> None:
    """Leave the shared group for good: Mosquitto would keep sending an offline member its share."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    b = BrokerConfig.from_url(url)
    c.connect(b.host, b.port, clean_start=True)  # no session expiry: gone on disconnect
    c.loop_start()
    c.disconnect()
    c.loop_stop()


def bare_round(url: str, msgs: list[tuple[str, bytes]]) -> float:
    cid = f"bench-bare-{uuid.uuid4().hex[:6]}"
    create_session(url, cid)
    publish(url, msgs)
    times: list[float] = []
    done = threading.Event()

    def on_message(_c: object, _u: object, _m: object) -> None:
        times.append(time.time())
        if len(times) == len(msgs):
            done.set()

    c = _client(url, cid)
    c.on_message = on_message
    c.loop_start()
    if not done.wait(180):
        raise EarmarkError(f"bare subscriber got {len(times)} of {len(msgs)}")
    c.disconnect()
    c.loop_stop()
    drop_session(url, cid)
    return len(msgs) / (times[-1] - times[0])


def gateway_round(url: str, db_url: str, msgs: list[tuple[str, bytes]], checks: Checks) -> float:
    engine = open_engine(db_url)
    for i, d in enumerate(DEVICES):
        profiles.register_device(engine, d, f"bench-user-{i % 2}", CFG)
    cid = f"bench-gw-{uuid.uuid4().hex[:6]}"
    create_session(url, cid)
    publish(url, msgs)
    merged = [0, 0.0]  # count, time of the last commit
    done = threading.Event()

    def on_commit(keys: list[tuple[str, int]], at: float) -> None:
        merged[0] += len(keys)
        merged[1] = at
        if merged[0] >= len(msgs):
            done.set()

    cfg = GatewayConfig(BrokerConfig.from_url(url), client_id=cid, merge=CFG)
    g = Gateway(cfg, engine, checks, on_commit).start()
    if not done.wait(180):
        raise EarmarkError(f"gateway merged {merged[0]} of {len(msgs)}")
    g.stop()
    engine.dispose()
    drop_session(url, cid)
    assert g.first_received_at is not None
    return len(msgs) / (merged[1] - g.first_received_at)


def latency(url: str, db_url: str, checks: Checks, n: int, rate: float) -> tuple[float, float]:
    engine = open_engine(db_url)
    for i, d in enumerate(DEVICES):
        profiles.register_device(engine, d, f"bench-user-{i % 2}", CFG)
    sent: dict[tuple[str, int], float] = {}
    got: dict[tuple[str, int], float] = {}
    done = threading.Event()

    def on_commit(keys: list[tuple[str, int]], _at: float) -> None:
        now = time.perf_counter()
        for k in keys:
            got[k] = now
        if len(got) >= n:
            done.set()

    g = Gateway(
        GatewayConfig(BrokerConfig.from_url(url), client_id="bench-lat", merge=CFG),
        engine,
        checks,
        on_commit,
    )
    g.start()
    g.wait_subscribed()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-lat-pub", protocol=mqtt.MQTTv5)
    b = BrokerConfig.from_url(url)
    c.connect(b.host, b.port)
    c.loop_start()
    for i, (topic, payload) in enumerate(tqdm(messages(n), desc="latency", leave=False)):
        device = topic.split("/")[2]
        seq = i // len(DEVICES) + 1
        sent[(device, seq)] = time.perf_counter()
        c.publish(topic, payload, qos=1)
        time.sleep(1 / rate)
    done.wait(120)
    c.disconnect()
    c.loop_stop()
    g.stop()
    engine.dispose()
    drop_session(url, "bench-lat")
    lat = sorted((got[k] - sent[k]) * 1000 for k in got if k in sent)
    return statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]


class PgSchema:
    """A throwaway schema in the PostgreSQL database (dropped on exit)."""

    def __init__(self, url: str) -> None:
        self.admin = create_engine(url, isolation_level="AUTOCOMMIT")
        self.name = f"em_bench_{uuid.uuid4().hex[:10]}"
        self.url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{self.name}"

    def __enter__(self) -> PgSchema:
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{self.name}"'))
        return self

    def __exit__(self, *_: object) -> None:
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{self.name}" CASCADE'))
        self.admin.dispose()


def two_instances(
    url: str, pg_url: str, msgs: list[tuple[str, bytes]], taxonomy: Path, workdir: Path
) -> dict[str, object]:
    with PgSchema(pg_url) as schema:
        engine = open_engine(schema.url)
        for i, d in enumerate(DEVICES):
            profiles.register_device(engine, d, f"bench-user-{i % 2}", CFG)
        ids = [f"bench-pg-{x}-{uuid.uuid4().hex[:4]}" for x in "ab"]
        for cid in ids:
            create_session(url, cid)
        publish(url, msgs)
        logs = [workdir / f"{cid}.log" for cid in ids]
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "earmark",
                    "gateway",
                    "--broker",
                    url,
                    "--db",
                    schema.url,
                    "--taxonomy",
                    str(taxonomy),
                    "--client-id",
                    cid,
                    "--half-life-days",
                    "36500",
                    "--cap",
                    "1e12",
                ],
                stdout=log.open("wb"),
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            for cid, log in zip(ids, logs, strict=True)
        ]

        def count() -> int:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(seen)).scalar() or 0)

        deadline = time.monotonic() + 600
        while count() < len(msgs) and time.monotonic() < deadline:
            time.sleep(0.1)
        for proc in procs:
            proc.terminate()
            proc.wait(30)
        for cid in ids:
            drop_session(url, cid)
        per_instance = []
        for log in logs:
            lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
            per_instance.append(
                int(json.loads(lines[-1])["earmark_gateway_merged_total"]) if lines else -1
            )
        with engine.connect() as conn:
            lo, hi, rows = conn.execute(
                select(
                    func.min(seen.c.merged_at), func.max(seen.c.merged_at), func.count()
                ).select_from(seen)
            ).one()
        expected = _expected_total(len(msgs))
        now = BASE + 3600 * (len(msgs) + 10)
        got = sum(
            i["score"]
            for u in (0, 1)
            for i in profiles.read_profile(engine, f"bench-user-{u}", CFG, 100, now)["interests"]
        )
        engine.dispose()
        return {
            "rows": rows,
            "per_instance": per_instance,
            "rate": rows / max(hi - lo, 1e-9),
            "score_expected": round(_decayed(expected, now), 3),
            "score_got": round(got, 3),
        }


def _expected_total(n: int) -> list[tuple[float, float]]:
    pts: list[tuple[float, float]] = []
    for i in range(n):
        seq = i // len(DEVICES) + 1
        pts += [(0.5, float(BASE + 3600 * (seq + 1)))] * (1 + i % 3)
    return pts


def _decayed(points: list[tuple[float, float]], now: float) -> float:
    return sum(w * 2 ** (-(now - t) / CFG.half_life_s) for w, t in points)


def run_bench(args: argparse.Namespace) -> int:
    n, rounds = args.messages, args.rounds
    if n < 100 or rounds < 1:
        raise EarmarkError("--messages must be at least 100 and --rounds at least 1")
    if args.latency_messages < 0:
        raise EarmarkError("--latency-messages must be 0 (skip the latency run) or more")
    msgs = messages(n)
    with tempfile.TemporaryDirectory(prefix="earmark-bench-") as tmp, LocalBroker() as broker:
        work = Path(tmp)
        tax = _taxonomy(work)
        from earmark.taxonomy import load_taxonomy

        checks = Checks(load_taxonomy(str(tax)).status)
        results: dict[str, list[float]] = {"bare paho subscriber": [], "gateway → SQLite": []}
        if args.pg:
            results["gateway → PostgreSQL"] = []
        steps = tqdm(total=rounds * len(results), desc="bench gateway", unit="run")
        for r in range(rounds):
            results["bare paho subscriber"].append(bare_round(broker.url, msgs))
            steps.update()
            results["gateway → SQLite"].append(
                gateway_round(broker.url, f"sqlite:///{work}/r{r}.db", msgs, checks)
            )
            steps.update()
            if args.pg:
                with PgSchema(args.pg) as schema:
                    results["gateway → PostgreSQL"].append(
                        gateway_round(broker.url, schema.url, msgs, checks)
                    )
                steps.update()
        steps.close()
        two = two_instances(broker.url, args.pg, msgs, tax, work) if args.pg else None
        lat = None
        if args.latency_messages:
            lat = latency(
                broker.url, f"sqlite:///{work}/lat.db", checks, args.latency_messages, rate=200.0
            )
    bare = statistics.median(results["bare paho subscriber"])
    print(f"\n{n} messages × {rounds} rounds, medians (msg/s), same broker, same run:")
    for name, vals in results.items():
        med = statistics.median(vals)
        runs = ", ".join(f"{v:.0f}" for v in vals)
        print(f"  {name:24} {med:9.0f} msg/s  {med / bare:5.2f}x bare   (runs: {runs})")
    if two is not None:
        per: list[int] = two["per_instance"]  # type: ignore[assignment]
        rate: float = two["rate"]  # type: ignore[assignment]
        ok = two["rows"] == n and sum(per) == n and two["score_got"] == two["score_expected"]
        print(f"  two instances -> PostgreSQL {rate:7.0f} msg/s  {rate / bare:5.2f}x bare")
        print(f"    merged per instance {per} (sum {sum(per)} of {n}), rows {two['rows']},")
        print(
            f"    profile score {two['score_got']} vs expected {two['score_expected']}:"
            f" {'no double counting' if ok else 'MISMATCH'}"
        )
    if lat is not None:
        print(
            f"  publish → profile update at 200 msg/s: median {lat[0]:.1f} ms, p99 {lat[1]:.1f} ms"
        )
    return 0
