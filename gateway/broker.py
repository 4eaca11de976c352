"""Launch a throwaway MQTT broker on a free loopback port (for the demo, simulators, benches).

Mosquitto when it is installed; otherwise earmark's own small broker
(:mod:`earmark.gateway.embedded_broker`) in a subprocess, so ``earmark demo`` also runs on a
machine without Mosquitto. ``EARMARK_BROKER=embedded`` forces the embedded one (to try it
where Mosquitto is installed), ``EARMARK_BROKER=mosquitto`` forces Mosquitto (an error if it
is missing). ``.kind`` says which one runs.

Tests have their own helper (tests/support/broker.py); this one lives in the package because
benchmarks and the simulator run without the test tree. Mosquitto's queue limits are lifted so
it never drops QoS 1 messages for a slow subscriber (the Debian default drops them); the
embedded broker has no limits to lift.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from earmark.errors import EarmarkError

CONFIG = """\
allow_anonymous true
persistence false
max_queued_messages 0
max_inflight_messages 0
set_tcp_nodelay true
"""
KINDS = ("mosquitto", "embedded")


def mosquitto_binary() -> str | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    return binary if Path(binary).exists() else None


def choose_kind(kind: str | None = None) -> str:
    """``kind``, else ``$EARMARK_BROKER``, else mosquitto if installed, else embedded."""
    choice = (kind or os.environ.get("EARMARK_BROKER", "")).strip().lower()
    if choice and choice not in KINDS:
        raise EarmarkError(f"EARMARK_BROKER={choice!r}: use 'mosquitto' or 'embedded'")
    if choice == "mosquitto" and mosquitto_binary() is None:
        raise EarmarkError(
            "mosquitto is not installed (apt-get install mosquitto), and EARMARK_BROKER=mosquitto"
            " asks for it; unset it to use the embedded broker"
        )
    return choice or ("mosquitto" if mosquitto_binary() else "embedded")


def end_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 5 s; a no-op if it already has."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class LocalBroker:
    """``with LocalBroker() as b: b.url`` — stopped and its directory removed on exit.

    ``kind`` ("mosquitto" or "embedded") overrides the choice above; ``extra_config`` is
    Mosquitto configuration and is refused with the embedded broker.
    """

    def __init__(self, extra_config: str = "", kind: str | None = None) -> None:
        self.kind = choose_kind(kind)
        if extra_config and self.kind == "embedded":
            raise EarmarkError(
                "extra_config is Mosquitto configuration; the embedded broker takes none"
                " (install mosquitto, or do not set EARMARK_BROKER=embedded)"
            )
        self.dir = Path(tempfile.mkdtemp(prefix="earmark-broker-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        if self.kind == "mosquitto":
            conf = self.dir / "mosquitto.conf"
            root = "user root\n" if os.geteuid() == 0 else ""
            conf.write_text(f"listener {self.port} 127.0.0.1\n{root}{CONFIG}{extra_config}")
            args = [str(mosquitto_binary()), "-c", str(conf)]
        else:
            module = "earmark.gateway.embedded_broker"
            args = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port)]
        log = self.dir / "broker.log"
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    why = log.read_text(errors="replace").strip().splitlines()[-1:]
                    self.stop()
                    raise EarmarkError(
                        f"{self.kind} did not start{': ' if why else ''}{''.join(why)}"
                    ) from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        end_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
