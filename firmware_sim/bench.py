"""``earmark bench device``: what one pair of glasses costs, measured on this machine.

The parent process starts a broker and the gateway, puts a link proxy between them and the
device (to count every byte the device sends), runs the device in its own process
(:mod:`earmark.firmware_sim.bench_worker`) so its peak RSS is its own, and records when the
gateway committed each message (the gateway's commit hook), which against the device's
end-of-speech times gives the end-to-end latency. Figures are medians over rounds, with the
bare recogniser on the same audio in the same run as the baseline.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from earmark.errors import EarmarkError

TARGET_CPU_PER_AUDIO_S = 0.3
TARGET_RSS_MB = 400
TARGET_BYTES_PER_HOUR = 10_000


def run_bench(utterances: int, rounds: int, engine: str, latency: int = 5) -> int:
    from earmark.endpoint import BrokerConfig
    from earmark.firmware_sim.proxy import LinkProxy
    from earmark.gateway import profiles
    from earmark.gateway.broker import LocalBroker
    from earmark.gateway.merge import MergeConfig
    from earmark.gateway.service import Gateway, GatewayConfig
    from earmark.gateway.store import open_engine
    from earmark.gateway.validate import Checks
    from earmark.taxonomy import load_taxonomy

    commits: dict[int, float] = {}
    lock = threading.Lock()

    def on_commit(keys: list[tuple[str, int]], at: float) -> None:
        with lock:
            for device, seq in keys:
                if device == "bench-dev1":
                    commits.setdefault(seq, at)

    with tempfile.TemporaryDirectory(prefix="earmark-bench-") as tmp, LocalBroker() as broker:
        db = open_engine(f"sqlite:///{Path(tmp) / 'gateway.sqlite3'}")
        merge = MergeConfig()
        profiles.register_device(db, "bench-dev1", "bench-user", merge)
        cfg = GatewayConfig(BrokerConfig.from_url(broker.url), client_id="bench-gw", merge=merge)
        gw = Gateway(cfg, db, Checks(load_taxonomy().status), on_commit=on_commit).start()
        if not gw.wait_subscribed(15):
            raise EarmarkError("the gateway could not subscribe to the local broker")
        proxy = LinkProxy(("127.0.0.1", broker.port), name="bench")
        cmd = [
            sys.executable, "-m", "earmark.firmware_sim.bench_worker",
            "--proxy", proxy.url, "--broker", broker.url, "--utterances", str(utterances),
            "--rounds", str(rounds), "--latency", str(latency), "--engine", engine,
        ]  # fmt: skip
        print(
            f"earmark bench device: one simulated device ({engine}), {utterances} utterances "
            f"× {rounds} rounds, {latency} live-speed utterances for latency",
            flush=True,
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        hour_bytes: list[int] = []

        def relay() -> None:  # progress bars through; note the proxy count at the phase mark
            assert proc.stderr is not None
            for line in proc.stderr:
                if '"phase": "hours_done"' in line:
                    hour_bytes.append(len(proxy.upstream))
                else:
                    sys.stderr.write(line)

        t = threading.Thread(target=relay, daemon=True)
        t.start()
        assert proc.stdout is not None
        out = proc.stdout.read()  # not communicate(): the relay thread owns stderr
        proc.wait()
        t.join(5)
        gw.stop()
        proxy.close()
        db.dispose()
    if proc.returncode != 0:
        raise EarmarkError(f"the device process failed (exit {proc.returncode})")
    result = json.loads(out)
    for line in report(result, commits, hour_bytes[0] if hour_bytes else None, rounds):
        print(line)
    return 0


def report(
    r: dict[str, Any], commits: dict[int, float], hours_bytes: int | None, rounds: int
) -> list[str]:
    audio_h = r["audio_s"] / 3600
    med = {k: statistics.median(x[k] for x in r["rounds"]) for k in r["rounds"][0]}
    publish_h = r["publish_cpu_per_msg"] * r["batches_per_hour"]  # per hour of speech
    stages = {
        "endpointing": med["endpointing"] / audio_h,
        "stt": med["stt"] / audio_h,
        "topics": med["topics"] / audio_h,
        "gate": med["gate"] / audio_h,
        "publish": publish_h,
    }
    total_h = sum(stages.values())
    bare_h = med["baseline_bare_stt"] / audio_h
    device_h = statistics.median(h["device_cpu"] for h in r["hours"]) / audio_h
    lines = [
        f"engine: {r['engine']}; audio per round {r['audio_s']:.1f} s "
        f"({r['speech_s']:.1f} s of speech, {med['utterances_heard']:.0f} utterances heard)",
        "",
        f"{'stage':<14}{'CPU s / audio h':>18}{'CPU s / audio s':>18}",
    ]
    for name, v in stages.items():
        lines.append(f"{name:<14}{v:>18.3f}{v / 3600:>18.6f}")
    lines += [
        f"{'sum':<14}{total_h:>18.3f}{total_h / 3600:>18.6f}",
        f"whole device process, runtime end to end: {device_h / 3600:.4f} CPU s per audio s "
        f"(target ≤ {TARGET_CPU_PER_AUDIO_S}: {device_h / 3600 / TARGET_CPU_PER_AUDIO_S:.2f}"
        " of budget)",
        f"baseline, bare recogniser on the same audio: {bare_h / 3600:.4f} CPU s per audio s; "
        f"earmark device / bare = {device_h / bare_h:.2f}x",
        f"peak RSS of the device process: {r['peak_rss_mb']:.0f} MB "
        f"(target ≤ {TARGET_RSS_MB} MB: {r['peak_rss_mb'] / TARGET_RSS_MB:.2f} of budget)",
    ]
    if hours_bytes is not None:
        per_h = hours_bytes / rounds
        lines.append(
            f"bytes sent per hour of speech (all MQTT bytes through the link): {per_h:.0f} B "
            f"(target < {TARGET_BYTES_PER_HOUR} B: {per_h / TARGET_BYTES_PER_HOUR:.2f})"
        )
    lat = [
        commits[x["seq_from"]] - x["speech_end"] for x in r["latency"] if x["seq_from"] in commits
    ]
    dev = [x["decided"] - x["speech_end"] for x in r["latency"] if x.get("decided")]
    wire = [
        commits[x["seq_from"]] - x["decided"]
        for x in r["latency"]
        if x.get("decided") and x["seq_from"] in commits
    ]
    if lat:
        lines.append(
            f"end of utterance → gateway profile updated (window flushed at once; the policy "
            f"adds its window and delay on top): median {statistics.median(lat) * 1000:.0f} ms, "
            f"max {max(lat) * 1000:.0f} ms (n={len(lat)}); of which end of speech → gate "
            f"decision {statistics.median(dev) * 1000:.0f} ms (700 ms is the endpointer's "
            f"silence timeout), decision → gateway commit {statistics.median(wire) * 1000:.0f} ms"
        )
    else:
        lines.append("latency: no live-speed utterance produced a batch (nothing to time)")
    return lines
