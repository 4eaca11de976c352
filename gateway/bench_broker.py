"""``earmark bench broker``: the embedded broker against Mosquitto, same run, same clients.

Both brokers are started once (:class:`earmark.gateway.broker.LocalBroker`, each in its own
process on loopback). Each round, for each broker (the order alternates between rounds), a
paho MQTT v5 subscriber subscribes at QoS 1 to the device signals topic, then a paho publisher
sends N signal batches at QoS 1 with a fixed in-flight window; the round is timed from the
first publish until the subscriber has every message and the publisher every PUBACK. Reported:
median msg/s per broker, the ratio embedded/Mosquitto, the broker process's CPU time per
message (from /proc) and its resident memory after the run (current and peak).

The clients are Python too, so on a small machine they, not Mosquitto, may set the pace: the
CPU per message shows what the brokers themselves cost.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
import uuid
from contextlib import ExitStack

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from tqdm import tqdm

from earmark.errors import EarmarkError
from earmark.gateway.bench import messages
from earmark.gateway.broker import LocalBroker, mosquitto_binary

TOPIC = "earmark/v1/+/signals"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> tuple[float, float]:
    """Resident memory of a process now and at its peak, in MB."""
    with open(f"/proc/{pid}/status") as f:
        kb = dict(line.split(":", 1) for line in f)
    return int(kb["VmRSS"].split()[0]) / 1024, int(kb["VmHWM"].split()[0]) / 1024


def _client(port: int, name: str, inflight: int = 20) -> mqtt.Client:
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-{name}-{uuid.uuid4().hex[:6]}",
        protocol=mqtt.MQTTv5,
    )
    c.max_inflight_messages_set(inflight)
    c.max_queued_messages_set(0)
    connected = threading.Event()
    c.on_connect = lambda *_: connected.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not connected.wait(10):
        raise EarmarkError(f"bench {name} could not connect to the broker on port {port}")
    return c


def one_round(port: int, msgs: list[tuple[str, bytes]], inflight: int) -> float:
    """msg/s from the first publish to the last message received and the last PUBACK."""
    received, done, subscribed = [0], threading.Event(), threading.Event()

    def on_message(*_: object) -> None:
        received[0] += 1
        if received[0] == len(msgs):
            done.set()

    sub = _client(port, "sub")
    sub.on_message = on_message
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.subscribe(TOPIC, 1)
    pub = None
    try:
        if not subscribed.wait(10):
            raise EarmarkError("the bench subscriber's SUBSCRIBE was not acknowledged")
        pub = _client(port, "pub", inflight)
        t0 = time.perf_counter()
        infos = [pub.publish(topic, payload, qos=1) for topic, payload in msgs]
        for info in infos:
            info.wait_for_publish(120)
        if not done.wait(120):
            raise EarmarkError(f"the subscriber got {received[0]} of {len(msgs)} messages")
        return len(msgs) / (time.perf_counter() - t0)
    finally:
        for c in (pub, sub):
            if c is not None:
                c.disconnect()
                c.loop_stop()


def mosquitto_version() -> str:
    binary = mosquitto_binary()
    out = subprocess.run([str(binary), "-h"], capture_output=True, text=True, timeout=10).stdout
    return out.split("\n", 1)[0].replace("mosquitto version", "Mosquitto").strip()


def run_bench(n: int, rounds: int, inflight: int) -> int:
    if n < 1 or rounds < 1 or inflight < 1:
        raise EarmarkError("--messages, --rounds and --inflight must be positive")
    kinds = ["mosquitto", "embedded"] if mosquitto_binary() else ["embedded"]
    msgs = messages(n)
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    cpu: dict[str, float] = dict.fromkeys(kinds, 0.0)
    with ExitStack() as stack:
        brokers = {k: stack.enter_context(LocalBroker(kind=k)) for k in kinds}
        for b in brokers.values():  # warm-up, not counted
            one_round(b.port, msgs[: min(n, 200)], inflight)
        for r in tqdm(range(rounds), desc="bench broker", unit="round"):
            for k in kinds if r % 2 == 0 else kinds[::-1]:
                pid = brokers[k].pid
                before = cpu_seconds(pid)
                rates[k].append(one_round(brokers[k].port, msgs, inflight))
                cpu[k] += cpu_seconds(pid) - before
        memory = {k: memory_mb(b.pid) for k, b in brokers.items()}
    size = statistics.median(len(p) for _, p in msgs)
    print(
        f"{n} QoS 1 messages per round ({size:.0f} B payloads), {rounds} rounds interleaved, "
        f"paho publisher (in-flight {inflight}) → broker → paho subscriber; medians"
    )
    names = {"mosquitto": mosquitto_version() if "mosquitto" in kinds else "", "embedded":
             "embedded (earmark)"}  # fmt: skip
    for k in kinds:
        rss, peak = memory[k]
        per_msg_us = cpu[k] / (n * rounds) * 1e6
        print(
            f"  {names[k]:<20} {statistics.median(rates[k]):8.0f} msg/s   "
            f"broker CPU {per_msg_us:5.1f} µs/msg   RSS {rss:5.1f} MB (peak {peak:.1f} MB)"
        )
    if len(kinds) == 2:
        ratio = statistics.median(rates["embedded"]) / statistics.median(rates["mosquitto"])
        print(f"  ratio embedded/Mosquitto: {ratio:.2f}")
    else:
        print("  Mosquitto is not installed: no ratio")
    return 0
