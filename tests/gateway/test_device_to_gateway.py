"""Device to profile over the production broker: real Outbox and Publisher on each device,
Mosquitto from deploy/mosquitto (per-device passwords, the real ACL), the gateway logged in as
``earmark.gateway``, SQLite and PostgreSQL.

The other gateway tests publish with a bare paho client and the transport tests stop at a
stand-in subscriber; here the two real halves meet. Every check is exact and is stated from
the device's side: what its ledger says the broker acknowledged is what the gateway counted,
once, and the profile is the decayed sum of exactly those windows.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, func, select

from earmark.device.ledger import Ledger
from earmark.device.outbox import Outbox
from earmark.device.publisher import Publisher
from earmark.endpoint import BrokerConfig
from earmark.gateway import profiles as p
from earmark.gateway.merge import MergeConfig
from earmark.gateway.service import Gateway, GatewayConfig
from earmark.gateway.store import contributions, dead_letters, seen
from earmark.gateway.validate import Checks
from earmark.wire import WEIGHTS, SignalBatch, Tag
from tests.gateway.conftest import TARGETABLE, GatewayProc, wait_for
from tests.support.broker import GATEWAY_USER, Broker, deploy_broker

HALF_LIFE_DAYS = 1.0  # short, so decay visibly separates windows a few hours apart
CFG = MergeConfig(half_life_s=HALF_LIFE_DAYS * 86400)
GATEWAY_PASSWORD = "gw-pass-7f3c"
ALICE = ("glass-a1", "glass-a2", "glass-a3")  # three devices, one user
INTRUDER = "glass-m1"  # valid credentials, owned by mallory
PASSWORDS = {d: f"pw-{d}-{i}x" for i, d in enumerate((*ALICE, INTRUDER))}
NOW_HOUR = int(time.time() // 3600) * 3600  # windows end at or before this: none in the future
T_REF = float(NOW_HOUR)  # profiles are compared as of this instant


def window_batch(device: str, hours_back: int, tags: tuple[tuple[str, float], ...]) -> SignalBatch:
    """A closed one-hour window ending ``hours_back`` hours before NOW_HOUR (seq from outbox)."""
    return SignalBatch(
        device_id=device,
        seq=1,
        taxonomy="test-1",
        model="m1",
        window_start=NOW_HOUR - 3600 * (hours_back + 1),
        window_s=3600,
        region="US",
        tags=tuple(Tag(t, w) for t, w in tags),
    )


def varied_batch(device: str, i: int) -> SignalBatch:
    """Deterministic but varied: 1–3 tags, every weight step, windows 1..n hours back."""
    d = ALICE.index(device) if device in ALICE else 3
    tags = [("100", WEIGHTS[(i + d) % 4])]
    if i % 2 == 0:
        tags.append((TARGETABLE[1 + (i + 3 * d) % 6], WEIGHTS[(i // 2) % 4]))
    if i % 3 == 0:
        tags.append(("110", 1.0))
    return window_batch(device, i + d, tuple(dict(tags).items()))


@dataclass
class Device:
    """One pair of glasses: its own state dir, ledger, outbox and publisher."""

    device_id: str
    ledger: Ledger
    outbox: Outbox
    publisher: Publisher

    @classmethod
    def start(cls, root: Path, broker: Broker, device_id: str) -> Device:
        state = root / device_id
        ledger = Ledger(state)
        outbox = Outbox(state, ledger=ledger)
        cfg = BrokerConfig.from_url(broker.url, username=device_id, password=PASSWORDS[device_id])
        pub = Publisher(outbox, device_id, cfg, backoff=(0.1, 1.0)).start()
        return cls(device_id, ledger, outbox, pub)

    def send(self, batch: SignalBatch) -> int:
        seq = self.outbox.put(batch)
        self.publisher.notify()
        return seq

    def acked(self) -> list[dict[str, Any]]:
        """What the ledger says the broker acknowledged, as the exact JSON that left."""
        return [r.message for r in self.ledger.sent()]

    def close(self) -> None:
        self.publisher.stop()
        self.outbox.close()
        self.ledger.close()


@pytest.fixture
def prod_broker(tmp_path: Path) -> Iterator[Broker]:
    b = deploy_broker(tmp_path / "broker", {**PASSWORDS, GATEWAY_USER: GATEWAY_PASSWORD})
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def devices(tmp_path: Path, prod_broker: Broker) -> Iterator[Callable[[str], Device]]:
    started: list[Device] = []

    def make(device_id: str) -> Device:
        started.append(Device.start(tmp_path / "devices", prod_broker, device_id))
        return started[-1]

    yield make
    for d in started:
        d.close()


@pytest.fixture
def gateway(
    prod_broker: Broker, engine: Engine, tag_check: Callable[[str], str]
) -> Iterator[tuple[Gateway, list[tuple[str, int]]]]:
    """The in-process gateway, logged in as the gateway user; records merge order."""
    merged: list[tuple[str, int]] = []
    lock = threading.Lock()

    def on_commit(keys: list[tuple[str, int]], _at: float) -> None:
        with lock:
            merged.extend(keys)

    broker = BrokerConfig.from_url(
        prod_broker.url, username=GATEWAY_USER, password=GATEWAY_PASSWORD
    )
    cfg = GatewayConfig(broker, client_id="gw-d2g", batch_size=50, merge=CFG)
    g = Gateway(cfg, engine, Checks(tag_check), on_commit=on_commit).start()
    assert g.wait_subscribed(), prod_broker.log_tail()
    yield g, merged
    g.stop()


# --- what to expect, from the device side ----------------------------------------------------


def expected_scores(sent: list[dict[str, Any]], now: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in sent:
        end = m["window_start"] + m["window_s"]
        for t in m["tags"]:
            out[t["id"]] = out.get(t["id"], 0.0) + t["w"] * 2 ** (-(now - end) / CFG.half_life_s)
    return out


def profile_scores(engine: Engine, user: str, now: float = T_REF) -> dict[str, float]:
    prof = p.read_profile(engine, user, CFG, limit=1000, now=now)
    return {i["tag"]: i["score"] for i in prof["interests"]}


def assert_scores(
    actual: dict[str, float], expected: dict[str, float], rel: float | None = None
) -> None:
    """Equal tags, equal scores: to the 6 decimals read_profile rounds to, or ``rel``."""
    assert sorted(actual) == sorted(expected)
    for tag, score in expected.items():
        assert actual[tag] == pytest.approx(score, rel=rel, abs=None if rel else 2e-6), tag
    assert max(expected.values()) < CFG.cap  # the sums are exact only below the cap


def seen_keys(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(seen.c.device_id, seen.c.seq).order_by(seen.c.device_id, seen.c.seq)
        )
        return [(r[0], r[1]) for r in rows]


def contribution_rows(engine: Engine) -> set[tuple[str, int, str, float, int]]:
    c = contributions.c
    with engine.connect() as conn:
        rows = conn.execute(select(c.device_id, c.seq, c.tag, c.w, c.window_start))
        return {(r[0], r[1], r[2], r[3], r[4]) for r in rows}


def dead_letter_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(dead_letters)).scalar() or 0)


def ledger_keys(devs: list[Device]) -> list[tuple[str, int]]:
    return sorted((d.device_id, m["seq"]) for d in devs for m in d.acked())


def ledger_contributions(devs: list[Device]) -> set[tuple[str, int, str, float, int]]:
    return {
        (d.device_id, m["seq"], t["id"], t["w"], m["window_start"])
        for d in devs
        for m in d.acked()
        for t in m["tags"]
    }


# --- the `earmark gateway` command, over HTTP ------------------------------------------------


class Http:
    def __init__(self, base: str, proc: GatewayProc | None = None) -> None:
        self.base = base
        self.proc = proc  # whose state and log a refused connection reports

    def call(
        self, method: str, path: str, token: str | None = None, body: Any = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, method=method, data=data)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                raw = r.read().decode()
                is_json = r.headers["Content-Type"].startswith("application/json")
                return r.status, json.loads(raw) if is_json else raw
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())
        except urllib.error.URLError as err:  # seen once (connection refused): say why
            if self.proc is None or self.proc.proc is None:
                raise
            tail = self.proc.log.read_text(errors="replace")[-3000:]
            raise AssertionError(
                f"{method} {path}: {err.reason}; gateway exit code {self.proc.proc.poll()}, "
                f"its log ends:\n{tail}"
            ) from err

    def metric(self, name: str) -> float:
        text = self.call("GET", "/metrics")[1]
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        assert match, name
        return float(match.group(1))


@pytest.fixture
def gateway_cmd(
    tmp_path: Path, prod_broker: Broker, db_url: str, taxonomy_file: Path
) -> Iterator[tuple[GatewayProc, Http]]:
    """``earmark gateway`` as in production: gateway user, password file, HTTP API."""
    pw = tmp_path / "gw.pass"
    pw.write_text(GATEWAY_PASSWORD + "\n")
    log = tmp_path / "gateway.log"
    proc = GatewayProc(
        prod_broker.url, db_url, taxonomy_file, "gw-d2g-cmd", log,
        "--username", GATEWAY_USER, "--password-file", str(pw),
        "--http", "127.0.0.1:0", "--half-life-days", str(HALF_LIFE_DAYS),
    )  # fmt: skip
    try:
        proc.start()
        wait_for(lambda: b"HTTP API on" in log.read_bytes(), 10, "HTTP API")
        port = re.search(rb"HTTP API on http://127\.0\.0\.1:(\d+)", log.read_bytes())
        assert port, log.read_text()
        yield proc, Http(f"http://127.0.0.1:{int(port.group(1))}", proc)
    finally:
        proc.stop()


def admin_token(db_url: str) -> str:
    """Issued with the admin CLI, as an operator would."""
    out = subprocess.run(
        [sys.executable, "-m", "earmark", "gateway-admin", "--db", db_url, "token", "--admin"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_three_devices_to_one_profile_through_the_gateway_command(
    gateway_cmd: tuple[GatewayProc, Http],
    prod_broker: Broker,
    engine: Engine,
    db_url: str,
    devices: Any,
) -> None:
    _, http = gateway_cmd
    admin = admin_token(db_url)
    # two devices registered over the admin API before they send, the third only afterwards
    assert http.call("PUT", f"/v1/devices/{ALICE[0]}", body={"user_id": "alice"})[0] == 401
    for dev in ALICE[:2]:
        status, reg = http.call("PUT", f"/v1/devices/{dev}", admin, {"user_id": "alice"})
        assert status == 200 and reg["created"] is True, reg
    devs = [devices(d) for d in ALICE]
    n = 20
    for i in range(1, n + 1):  # interleaved, as three wearers would produce them
        for d in devs:
            d.send(varied_batch(d.device_id, i))
    for d in devs:
        assert d.publisher.wait_drained(30), d.device_id
    wait_for(lambda: len(seen_keys(engine)) == 3 * n, 30, "every batch merged")

    # the third device was not registered: its windows were kept, and fold in now
    status, reg = http.call("PUT", f"/v1/devices/{ALICE[2]}", admin, {"user_id": "alice"})
    assert status == 200 and reg["created"] is True
    assert reg["folded"] == sum(len(m["tags"]) for m in devs[2].acked())

    for d in devs:
        assert d.outbox.count() == 0
        assert d.ledger.dropped() == []
        assert [m["seq"] for m in d.acked()] == list(range(1, n + 1))
    assert seen_keys(engine) == ledger_keys(devs)  # each acked batch once, nothing else
    assert contribution_rows(engine) == ledger_contributions(devs)
    expected = expected_scores([m for d in devs for m in d.acked()], T_REF)
    assert_scores(profile_scores(engine, "alice"), expected)
    assert dead_letter_count(engine) == 0

    # a device resending after a lost PUBACK: the exact bytes again count zero times more
    again = next(m for m in devs[0].acked() if m["seq"] == 7)
    resend = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="resender", protocol=mqtt.MQTTv5)
    resend.username_pw_set(ALICE[0], PASSWORDS[ALICE[0]])
    resend.connect(prod_broker.host, prod_broker.port)
    resend.loop_start()
    payload = json.dumps(again, separators=(",", ":"), sort_keys=True).encode()  # wire form
    resend.publish(f"earmark/v1/{ALICE[0]}/signals", payload, qos=1).wait_for_publish(10)
    resend.disconnect()
    resend.loop_stop()
    wait_for(lambda: http.metric("earmark_gateway_duplicates_total") == 1, 20, "duplicate")
    assert seen_keys(engine) == ledger_keys(devs)
    assert_scores(profile_scores(engine, "alice"), expected)

    # the owner reads the same profile over HTTP, decayed to the server's now
    status, issued = http.call("POST", "/v1/users/alice/tokens", admin)
    assert status == 201
    status, prof = http.call("GET", "/v1/profiles/alice?limit=100", issued["token"])
    assert status == 200 and prof["devices"] == sorted(ALICE)
    later = expected_scores([m for d in devs for m in d.acked()], prof["as_of"])
    assert_scores({i["tag"]: i["score"] for i in prof["interests"]}, later, rel=5e-5)
    assert http.metric("earmark_gateway_merged_total") == 3 * n
    assert http.metric("earmark_gateway_parked_total") == n  # the third device's, then folded


# --- in-process gateway: the ACL, and a long offline backlog ---------------------------------


def test_a_device_cannot_write_into_another_devices_profile(
    gateway: tuple[Gateway, list[tuple[str, int]]],
    engine: Engine,
    prod_broker: Broker,
    devices: Any,
) -> None:
    g, _ = gateway
    p.register_device(engine, ALICE[0], "alice", CFG)
    p.register_device(engine, INTRUDER, "mallory", CFG)
    # the intruder logs in with its own valid password and queues three batches that claim
    # to be alice's glasses (so they go to alice's topic), then one honest batch of its own
    intruder = devices(INTRUDER)
    for i in range(3):
        intruder.send(window_batch(ALICE[0], 2 + i, (("119", 1.0),)))
    intruder.send(window_batch(INTRUDER, 2, (("118", 0.5),)))
    wait_for(lambda: intruder.outbox.count() == 0, 20, "intruder outbox settled")
    refused = [(seq, reason) for seq, _, _, reason, _ in intruder.ledger.dropped()]
    assert refused == [(s, "refused:not_authorized") for s in (1, 2, 3)]
    assert [m["seq"] for m in intruder.acked()] == [4]
    # alice's real device then sends; once its batches are merged, nothing forged is there
    alice = devices(ALICE[0])
    for i in range(2):
        alice.send(window_batch(ALICE[0], 1 + i, (("100", 0.75),)))
    assert alice.publisher.wait_drained(20)
    wait_for(lambda: len(seen_keys(engine)) == 3, 20, "honest batches merged")
    assert seen_keys(engine) == ledger_keys([alice, intruder])
    assert not any(row[2] == "119" for row in contribution_rows(engine))
    assert_scores(profile_scores(engine, "alice"), expected_scores(alice.acked(), T_REF))
    assert_scores(profile_scores(engine, "mallory"), expected_scores(intruder.acked(), T_REF))
    # the forged batches never reached the gateway at all, not even as dead letters
    assert g.metrics.get("earmark_gateway_messages_in_total") == 3
    assert dead_letter_count(engine) == 0
    denied = f"Denied PUBLISH from {INTRUDER}"
    wait_for(
        lambda: prod_broker.log_path.read_text(errors="replace").count(denied) >= 3,
        10,
        "the broker to log the three denials",
    )


def test_offline_backlog_drains_in_order_and_totals_stay_exact(
    gateway: tuple[Gateway, list[tuple[str, int]]], engine: Engine, devices: Any
) -> None:
    _, merged = gateway
    for d in ALICE[:2]:
        p.register_device(engine, d, "alice", CFG)
    roaming, steady = devices(ALICE[0]), devices(ALICE[1])
    for i in range(1, 6):
        roaming.send(varied_batch(roaming.device_id, 60 - i))
    assert roaming.publisher.wait_drained(20)
    wait_for(lambda: len(seen_keys(engine)) == 5, 20, "online batches merged")

    # the link drops (hardware says so); 50 windows close while it is down
    roaming.publisher.set_link(False)
    wait_for(lambda: not roaming.publisher.connected, 10, "roaming device offline")
    backlog = 50
    for i in range(1, backlog + 1):
        roaming.send(varied_batch(roaming.device_id, 55 - i))
    # meanwhile another of alice's devices keeps sending, and is merged
    for i in range(1, 11):
        steady.send(varied_batch(steady.device_id, i))
    assert steady.publisher.wait_drained(20)
    wait_for(lambda: len(seen_keys(engine)) == 15, 20, "the online device merged")
    assert roaming.outbox.count() == backlog  # all of it waits on the device, none left
    assert [k for k in seen_keys(engine) if k[0] == roaming.device_id] == [
        (roaming.device_id, s) for s in range(1, 6)
    ]

    roaming.publisher.set_link(True)
    assert roaming.publisher.wait_drained(30)
    total = 5 + backlog + 10
    wait_for(lambda: len(seen_keys(engine)) == total, 30, "backlog merged")
    # the gateway merged the roaming device's batches in sequence order, each once
    assert [s for d, s in merged if d == roaming.device_id] == list(range(1, 6 + backlog))
    assert roaming.outbox.count() == 0 and roaming.ledger.dropped() == []
    assert [m["seq"] for m in roaming.acked()] == list(range(1, 6 + backlog))
    assert seen_keys(engine) == ledger_keys([roaming, steady])
    assert contribution_rows(engine) == ledger_contributions([roaming, steady])
    sent = roaming.acked() + steady.acked()
    assert_scores(profile_scores(engine, "alice"), expected_scores(sent, T_REF))
    assert dead_letter_count(engine) == 0
