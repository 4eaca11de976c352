"""``earmark gateway``, ``earmark gateway-admin``, ``earmark bench gateway`` and ``broker``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path

from earmark.cli import Cli
from earmark.errors import EarmarkError
from earmark.gateway.merge import DEFAULT_CAP, DEFAULT_MAX_BATCHES_PER_WINDOW, MergeConfig
from earmark.wire import BLOCKED_REGIONS

log = logging.getLogger(__name__)
DEFAULT_DB = "sqlite:///earmark-gateway.db"


def register(cli: Cli) -> None:
    p = cli.command(
        "gateway", run_gateway, "run the gateway: MQTT in, merged profiles out, HTTP API"
    )
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT or mqtts://HOST:PORT")
    p.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB})")
    p.add_argument("--http", default=None, metavar="HOST:PORT", help="serve the HTTP API here")
    p.add_argument("--username", default=os.environ.get("EARMARK_GATEWAY_USER"))
    p.add_argument("--password-file", type=Path, help="file holding the broker password")
    p.add_argument("--ca"), p.add_argument("--cert"), p.add_argument("--key")
    p.add_argument(
        "--client-id", help="MQTT client id; keep it stable so the session survives restarts"
    )
    p.add_argument("--batch-size", type=int, default=500, help="messages per DB transaction")
    p.add_argument("--half-life-days", type=float, default=14.0)
    p.add_argument("--cap", type=float, default=DEFAULT_CAP, help="maximum score of one interest")
    p.add_argument("--max-batches-per-window", type=int, default=DEFAULT_MAX_BATCHES_PER_WINDOW)
    p.add_argument(
        "--blocked-regions",
        default=",".join(sorted(BLOCKED_REGIONS)),
        help="comma-separated ISO codes",
    )
    p.add_argument("--taxonomy", help="taxonomy JSON (default: the shipped one)")
    _admin(cli)
    b = cli.command(
        "gateway", bench_gateway, "gateway throughput vs a bare paho subscriber", group="bench"
    )
    b.add_argument("--messages", type=int, default=5000)
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument(
        "--pg",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="PostgreSQL URL ('' to skip)",
    )
    b.add_argument("--latency-messages", type=int, default=500)
    bb = cli.command(
        "broker",
        bench_broker,
        "the embedded MQTT broker vs Mosquitto: msg/s, broker CPU and RSS",
        group="bench",
    )
    bb.add_argument("--messages", type=int, default=5000)
    bb.add_argument("--rounds", type=int, default=5)
    bb.add_argument("--inflight", type=int, default=100, help="publisher's QoS 1 window")


def _admin(cli: Cli) -> None:
    a = cli.command("gateway-admin", run_admin, "gateway admin: register devices, issue API tokens")
    a.add_argument("--db", default=DEFAULT_DB)
    a.add_argument("--half-life-days", type=float, default=14.0)
    sub = a.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = sub.add_parser("register", help="give a device to a user")
    r.add_argument("device_id"), r.add_argument("user_id")
    t = sub.add_parser("token", help="issue an API token for a user (or --admin)")
    t.add_argument("user_id", nargs="?")
    t.add_argument("--admin", action="store_true")
    sub.add_parser("migrate", help="create or upgrade the tables")
    d = sub.add_parser("dead-letters", help="count dead letters by reason")
    d.add_argument("--limit", type=int, default=0, help="also show the newest N")


def merge_config(args: argparse.Namespace) -> MergeConfig:
    if args.half_life_days <= 0:
        raise EarmarkError("--half-life-days must be positive")
    return MergeConfig(
        half_life_s=args.half_life_days * 86400,
        cap=getattr(args, "cap", DEFAULT_CAP),
        max_batches_per_window=getattr(
            args, "max_batches_per_window", DEFAULT_MAX_BATCHES_PER_WINDOW
        ),
    )


def run_gateway(args: argparse.Namespace) -> int:
    from earmark.endpoint import BrokerConfig
    from earmark.gateway.http_api import ApiServer
    from earmark.gateway.service import Gateway, GatewayConfig
    from earmark.gateway.store import open_engine
    from earmark.gateway.validate import Checks
    from earmark.taxonomy import load_taxonomy

    password = None
    if args.password_file:
        try:
            password = args.password_file.read_text().strip()
        except OSError as err:
            raise EarmarkError(f"cannot read --password-file: {err}") from None
    broker = BrokerConfig.from_url(
        args.broker,
        username=args.username,
        password=password,
        ca=args.ca,
        cert=args.cert,
        key=args.key,
    )
    blocked = {c.strip().upper() for c in args.blocked_regions.split(",") if c.strip()}
    checks = Checks(tag_check=load_taxonomy(args.taxonomy).status, blocked_regions=blocked)
    engine = open_engine(args.db)
    cfg = GatewayConfig(broker=broker, batch_size=max(1, args.batch_size), merge=merge_config(args))
    if args.client_id:
        cfg.client_id = args.client_id
    gateway = Gateway(cfg, engine, checks).start()
    api = None
    if args.http:
        host, _, port = args.http.rpartition(":")
        try:
            api = ApiServer(
                host or "127.0.0.1",
                int(port),
                engine,
                cfg.merge,
                gateway.metrics,
                gateway.connected,
            )
        except (ValueError, OSError) as err:
            gateway.stop()
            raise EarmarkError(f"cannot serve HTTP on {args.http!r}: {err}") from None
        api.start()
        print(f"HTTP API on http://{host or '127.0.0.1'}:{api.port}", flush=True)
    print(f"gateway {cfg.client_id} consuming from {args.broker} into {engine.url!r}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    if api is not None:
        api.stop()
    gateway.stop()
    print(json.dumps(gateway.metrics.snapshot()), flush=True)
    return 0


def run_admin(args: argparse.Namespace) -> int:
    from sqlalchemy import func, select

    from earmark.gateway import profiles
    from earmark.gateway.store import dead_letters, open_engine

    engine = open_engine(args.db)
    if args.action == "register":
        print(
            json.dumps(
                profiles.register_device(engine, args.device_id, args.user_id, merge_config(args))
            )
        )
    elif args.action == "token":
        if args.admin == (args.user_id is not None):
            raise EarmarkError("give a user id or --admin (not both)")
        print(profiles.issue_token(engine, None if args.admin else args.user_id))
    elif args.action == "dead-letters":
        with engine.connect() as conn:
            q = select(dead_letters.c.reason, func.count()).group_by(dead_letters.c.reason)
            for reason, n in conn.execute(q):
                print(f"{reason:24} {n}")
            if args.limit:
                q2 = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(args.limit)
                for r in conn.execute(q2):
                    print(
                        f"#{r.id} {r.reason} {r.topic} {r.payload_len}B"
                        f" sha256={r.payload_sha256[:16]} {r.detail}"
                    )
    else:
        print(f"schema up to date at {engine.url!r}")
    return 0


def bench_broker(args: argparse.Namespace) -> int:
    from earmark.gateway.bench_broker import run_bench

    return run_bench(args.messages, args.rounds, args.inflight)


def bench_gateway(args: argparse.Namespace) -> int:
    from earmark.gateway.bench import run_bench

    return run_bench(args)
