"""`earmark device` (the device pipeline on a real machine) and `earmark bench publish`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from earmark.cli import Cli
from earmark.device.cli_privacy import add_region_arguments
from earmark.errors import EarmarkError

log = logging.getLogger(__name__)


def register(cli: Cli) -> None:
    p = cli.command(
        "device",
        cmd_device,
        help="run the device pipeline: audio → STT → topics → privacy gate → outbox → MQTT",
    )
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--device-id", required=True, help="this device's id (also its MQTT user)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--mic", action="store_true", help="listen on the microphone")
    src.add_argument("--wav", nargs="+", metavar="FILE", help="process these recordings")
    p.add_argument("--mic-device", help="microphone name or index (see `earmark devices`)")
    p.add_argument(
        "--max-seconds", type=float, help="with --mic: stop after this much audio (default: never)"
    )
    p.add_argument(
        "--state", type=Path, help="state dir (default $EARMARK_HOME or ~/.local/share/earmark)"
    )
    p.add_argument("--username", help="MQTT username (default: the device id)")
    p.add_argument(
        "--password", help="MQTT password (default: $EARMARK_MQTT_PASSWORD)", default=None
    )
    p.add_argument("--ca", help="CA bundle for mqtts://")
    p.add_argument("--cert", help="client certificate for mqtts:// (mutual TLS)")
    p.add_argument("--key", help="client key for --cert")
    p.add_argument("--policy", help="privacy policy file (default: the shipped one)")
    p.add_argument("--engine", default="auto", help="auto | vosk | pocketsphinx")
    p.add_argument("--vosk-model", help="Vosk model directory")
    reg = p.add_argument_group("where the device is (no signal at all: nothing is sent)")
    add_region_arguments(reg)
    p.add_argument(
        "--storage-mb", type=float, default=16.0, help="flash the outbox may use (default 16)"
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=15.0,
        help="when the audio ends, seconds to wait for the outbox to drain (default 15)",
    )

    b = cli.command(
        "publish",
        cmd_bench_publish,
        help="outbox + publisher throughput against a bare paho publisher, same run",
        group="bench",
    )
    b.add_argument("--broker", help="use this broker (default: start a local mosquitto)")
    b.add_argument("-n", "--messages", type=int, default=5000)
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--inflight", type=int, default=64, help="QoS 1 window for both clients")


def cmd_device(args: argparse.Namespace) -> int:
    from earmark.clock import SystemClock
    from earmark.device.hardware import HostHardware
    from earmark.device.outbox import default_state_dir
    from earmark.device.runtime import build_runtime, host_region
    from earmark.endpoint import BrokerConfig

    broker = BrokerConfig.from_url(
        args.broker,
        username=args.username or args.device_id,
        password=args.password or os.environ.get("EARMARK_MQTT_PASSWORD"),
        ca=args.ca,
        cert=args.cert,
        key=args.key,
    )
    for name in ("ca", "cert", "key"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise EarmarkError(f"--{name} {path}: no such file")
    region = host_region(args.lat, args.lon, args.country, args.mcc, args.locale, args.tz)
    hardware = HostHardware(region, storage_limit_bytes=int(args.storage_mb * 1024 * 1024))
    runtime = build_runtime(
        args.device_id,
        args.state or default_state_dir(),
        broker=broker,
        clock=SystemClock(),
        hardware=hardware,
        engine=args.engine,
        vosk_model=args.vosk_model,
        policy_path=args.policy,
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        if args.mic:
            from earmark.device.mic import MicSource

            dev = args.mic_device
            mic = MicSource(int(dev) if dev and dev.isdigit() else dev, args.max_seconds)
            runtime.run(mic)
            runtime.flush()
            runtime.close(drain_timeout=args.drain_timeout)
        else:
            from earmark.device.audio import WavSource

            for path in args.wav:
                try:
                    runtime.run(WavSource(path))
                except EarmarkError as err:  # one bad file must not stop the others
                    print(f"earmark: error: {err}", file=sys.stderr, flush=True)
            runtime.flush()
            runtime.close(drain_timeout=args.drain_timeout)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: queue the open window, try to send it
        runtime.flush()
        runtime.close(drain_timeout=min(args.drain_timeout, 5.0))
    finally:
        runtime.close()
    s = runtime.stats
    decided = ", ".join(f"{k} {v}" for k, v in sorted(s.decisions.items())) or "none"
    print(
        f"{s.utterances} utterances ({decided}); {s.batches_queued} batches queued, "
        f"{runtime.outbox.count()} still in the outbox"
    )
    return 0


def cmd_bench_publish(args: argparse.Namespace) -> int:
    from earmark.device.bench_publish import local_broker, report, run_bench
    from earmark.endpoint import BrokerConfig

    if args.messages < 1 or args.rounds < 1 or args.inflight < 1:
        raise EarmarkError("--messages, --rounds and --inflight must be positive")
    if args.broker:
        results = run_bench(
            BrokerConfig.from_url(args.broker), args.messages, args.rounds, args.inflight
        )
    else:
        with local_broker() as cfg:
            results = run_bench(cfg, args.messages, args.rounds, args.inflight)
    for line in report(results, args.messages):
        print(line)
    return 0
