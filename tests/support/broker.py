"""Start a real Mosquitto on a free port with a test-owned configuration.

Tests never use the machine's broker on :1883: each gets its own instance, its own config
and its own persistence directory, and stops it afterwards. ``Broker.restart()`` keeps the
port and the persistence file, for broker-restart fault tests.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from earmark.gateway.broker import end_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    path = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if path is None:
        raise RuntimeError(
            "mosquitto is not installed: run `make test` (it installs it)"
            " or apt-get install mosquitto"
        )
    return path


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Broker:
    workdir: Path
    config_body: str  # everything but the listener and persistence lines
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mosquitto.log"

    def start(self) -> Broker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            f"listener {self.port} {self.host}\n"
            f"persistence_location {self.workdir}/\n"
            f"log_dest file {self.log_path}\n"
            # as root Mosquitto drops to the `mosquitto` user, which cannot read a private
            # tmp dir; a test broker stays the user that started it
            + ("user root\n" if os.geteuid() == 0 else "")
            + self.config_body
        )
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            wait_port(self.host, self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start: {self.log_tail()}") from None
        return self

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return "(no log)"


# Open test broker: anonymous, persistent, queue limits lifted (see deploy/mosquitto for the
# production configuration with credentials and ACLs).
OPEN_CONFIG = """\
allow_anonymous true
persistence true
max_queued_messages 0
max_inflight_messages 0
"""


# --- the production configuration from deploy/, for tests ---------------------------------

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO / "deploy" / "mosquitto"
GATEWAY_USER = "earmark.gateway"  # see deploy/mosquitto/acl
# Lines of the deploy config a test must replace: paths, listeners and their TLS files.
_REPLACED = (
    "listener", "persistence_location", "log_dest", "password_file", "acl_file",
    "cafile", "certfile", "keyfile", "tls_version", "require_certificate",
)  # fmt: skip


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_test_ca(workdir: Path, host: str = "127.0.0.1") -> TlsFiles:
    """A throwaway CA, a server certificate for ``host`` and a client one (openssl CLI)."""
    workdir.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=workdir, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        "/CN=earmark test CA", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    (workdir / "san.ext").write_text(f"subjectAltName=IP:{host},DNS:localhost\n")
    for name, cn in (("server", host), ("client", "dev-tls-0001")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        extra = ["-extfile", "san.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", *extra)  # fmt: skip
    return TlsFiles(
        workdir / "ca.crt", workdir / "server.crt", workdir / "server.key",
        workdir / "client.crt", workdir / "client.key",
    )  # fmt: skip


def deploy_config_body(workdir: Path, users: dict[str, str], tls: TlsFiles | None = None) -> str:
    """deploy/mosquitto/mosquitto.conf with test paths, a test password file and the real ACL.

    ``users`` maps username → password (device ids, and GATEWAY_USER for the gateway).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    passwd = workdir / "passwd"
    passwd.unlink(missing_ok=True)
    passwd.touch(mode=0o600)
    for user, password in users.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    kept = [
        line
        for line in (DEPLOY_DIR / "mosquitto.conf").read_text().splitlines()
        if line.split(" ", 1)[0] not in _REPLACED
    ]
    tls_lines = []
    if tls is not None:  # applies to the one listener Broker.start() writes first
        tls_lines = [
            f"cafile {tls.ca}",
            f"certfile {tls.server_cert}",
            f"keyfile {tls.server_key}",
        ]
    return "\n".join(
        tls_lines
        + kept
        + [f"password_file {passwd}", f"acl_file {DEPLOY_DIR / 'acl'}", "log_type all", ""]
    )


def deploy_broker(workdir: Path, users: dict[str, str], tls: TlsFiles | None = None) -> Broker:
    """Start Mosquitto from the production config (credentials, ACL, persistence, limits)."""
    return Broker(workdir, deploy_config_body(workdir, users, tls)).start()
