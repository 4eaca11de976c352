"""Launch a throwaway Mosquitto on a free loopback port (for ``bench gateway`` and simulators).

Tests have their own helper (tests/support/broker.py); this one lives in the package because
benchmarks and the simulator run without the test tree. Queue limits are lifted so the
broker never drops QoS 1 messages for a slow subscriber (the Debian default drops them).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
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


class LocalBroker:
    """``with LocalBroker() as b: b.url`` — stopped and its directory removed on exit."""

    def __init__(self, extra_config: str = "") -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="earmark-broker-"))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise EarmarkError("mosquitto is not installed (apt-get install mosquitto)")
        conf = self.dir / "mosquitto.conf"
        root = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"listener {self.port} 127.0.0.1\n{root}{CONFIG}{extra_config}")
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise EarmarkError("mosquitto did not start") from None
                time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalBroker:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
