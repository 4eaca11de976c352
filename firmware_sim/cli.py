"""``earmark sim``, ``earmark demo`` and ``earmark bench device``."""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from pathlib import Path

from earmark.cli import Cli
from earmark.errors import EarmarkError

# what the header says about the broker (Services.broker_kind)
BROKER_NOTE = {
    "given": "given",
    "mosquitto": "Mosquitto, started here",
    "embedded": "earmark's embedded broker, started here",
}


def register(cli: Cli) -> None:
    p = cli.command(
        "sim", cmd_sim, help="run a scenario on simulated glasses against a broker and a gateway"
    )
    p.add_argument("scenario", help="a scenario TOML file or a bundled name (demo, day, travel…)")
    p.add_argument("--devices", type=int, help="number of devices (clones the scenario's users)")
    p.add_argument(
        "--speed", type=float, default=0.0, help="simulated seconds per real second (0: flat out)"
    )
    p.add_argument("--report", type=Path, metavar="DIR", help="write timeline, summary and plot")
    p.add_argument(
        "--broker", help="use this broker (mqtt://HOST:PORT, anonymous) instead of starting one"
    )
    p.add_argument("--db", help="gateway database URL (default: SQLite in a temp dir)")
    p.add_argument("--quiet", action="store_true", help="print only the summary")
    p.add_argument("--keep", action="store_true", help="keep the work dir (device state, DB)")

    d = cli.command(
        "demo", cmd_demo, help="the end-to-end demo: a day of speech → profile (< 1 min)"
    )
    d.add_argument("--report", type=Path, metavar="DIR", help="also write timeline, summary, plot")

    b = cli.command(
        "device",
        cmd_bench_device,
        help="one simulated device: CPU per stage, peak RSS, bytes, end-to-end latency",
        group="bench",
    )
    b.add_argument("--utterances", type=int, default=24, help="utterances per round (default 24)")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--engine", default="pocketsphinx", help="pocketsphinx | vosk")


def _quiet_logs(verbose: bool) -> None:
    """Expected faults (link cuts, power loss) are the point of a simulation, not warnings."""
    if not verbose:
        quiet = ("publisher", "outbox", "runtime", "consent")
        for name in [f"earmark.device.{m}" for m in quiet] + ["earmark.gateway"]:
            logging.getLogger(name).setLevel(logging.ERROR)


def run_scenario(
    name: str,
    *,
    devices: int | None = None,
    speed: float = 0.0,
    report: Path | None = None,
    broker: str | None = None,
    db: str | None = None,
    quiet: bool = False,
    keep: bool = False,
    verbose: bool = False,
) -> int:
    from earmark.firmware_sim import scenario as sc
    from earmark.firmware_sim.services import Services
    from earmark.firmware_sim.timeline import Timeline
    from earmark.firmware_sim.world import World

    if devices is not None and devices < 1:
        raise EarmarkError("--devices must be at least 1")
    if speed < 0:
        raise EarmarkError("--speed must be >= 0 (0: as fast as possible)")
    scenario = sc.load(name)
    _quiet_logs(verbose)
    workdir = Path(tempfile.mkdtemp(prefix="earmark-sim-"))
    t0 = time.monotonic()
    services = world = None
    try:
        services = Services.start(workdir, broker_url=broker, db_url=db)
        timeline = Timeline(services.taxonomy, quiet=quiet)
        n = devices or len(scenario.users)
        print(f"earmark sim: {scenario.name}")
        print(
            f"  {n} device(s), speed {'flat out' if speed == 0 else f'{speed:g}x'}; "
            f"broker {services.broker_url} ({BROKER_NOTE[services.broker_kind]}); "
            f"gateway on {services.engine.url.render_as_string(hide_password=True)}"
        )
        print("  loading the speech recogniser and the topic model …", flush=True)
        world = World(scenario, services, workdir, devices=devices, speed=speed, observer=timeline)
        world.run()
        summary = timeline.summary(world)
        timeline.print_summary(summary)
        if report is not None:
            for path in timeline.write_report(report, summary):
                print(f"wrote {path}")
        print(f"done in {time.monotonic() - t0:.1f} s")
        ok = all(r["match"] for r in summary["reconcile"].values())
        return 0 if ok else 1
    finally:
        if world is not None:
            world.close()
        if services is not None:
            services.stop()
        if keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def cmd_sim(args: argparse.Namespace) -> int:
    return run_scenario(
        args.scenario,
        devices=args.devices,
        speed=args.speed,
        report=args.report,
        broker=args.broker,
        db=args.db,
        quiet=args.quiet,
        keep=args.keep,
        verbose=args.verbose > 0,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    return run_scenario("demo", report=args.report, verbose=args.verbose > 0)


def cmd_bench_device(args: argparse.Namespace) -> int:
    from earmark.firmware_sim.bench import run_bench

    if args.utterances < 1 or args.rounds < 1:
        raise EarmarkError("--utterances and --rounds must be positive")
    return run_bench(args.utterances, args.rounds, args.engine)
