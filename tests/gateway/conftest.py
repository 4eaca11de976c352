"""Fixtures for the gateway tests: real SQLite and PostgreSQL stores, a small taxonomy, a
publisher that waits for every PUBACK, and the gateway as a subprocess for kill tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import Engine, create_engine, func, select, text

from earmark.gateway.store import open_engine, seen
from earmark.wire import SignalBatch, Tag
from tests.conftest import PG_URL

TARGETABLE = [str(i) for i in range(100, 120)]
SENSITIVE = "900"
BASE_WINDOW = 480_000 * 3600  # an hour in 2024: in the past for any test run


def write_taxonomy(path: Path) -> Path:
    nodes = [
        {
            "id": t,
            "name": f"Topic {t}",
            "parent": None,
            "tier": 1,
            "tier1": f"Topic {t}",
            "targetable": True,
            "sensitive": None,
        }
        for t in TARGETABLE
    ]
    nodes.append(
        {
            "id": SENSITIVE,
            "name": "Health",
            "parent": None,
            "tier": 1,
            "tier1": "Health",
            "targetable": False,
            "sensitive": "health",
        }
    )
    path.write_text(json.dumps({"version": "test-1", "nodes": nodes}))
    return path


@pytest.fixture(scope="session")
def taxonomy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_taxonomy(tmp_path_factory.mktemp("tax") / "taxonomy.json")


@pytest.fixture(scope="session")
def tag_check(taxonomy_file: Path) -> Callable[[str], str]:
    from earmark.taxonomy import load_taxonomy

    return load_taxonomy(str(taxonomy_file)).status


def make_batch(
    device: str,
    seq: int,
    tags: tuple[str, ...] = ("100",),
    w: float = 0.5,
    region: str = "US",
    window: int | None = None,
) -> SignalBatch:
    return SignalBatch(
        device_id=device,
        seq=seq,
        taxonomy="test-1",
        model="m1",
        window_start=BASE_WINDOW + 3600 * (seq if window is None else window),
        window_s=3600,
        region=region,
        tags=tuple(Tag(t, w) for t in tags),
    )


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'gateway.db'}"


def _pg_admin() -> Engine:
    return create_engine(PG_URL, isolation_level="AUTOCOMMIT")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards (parallel runs never meet)."""
    schema = f"em_test_{uuid.uuid4().hex[:12]}"
    admin = _pg_admin()
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gateway.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = open_engine(db_url)
    yield e
    e.dispose()


def seen_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(seen)).scalar() or 0)


class Pub:
    """A device-like publisher on a real broker: QoS 1, waits for every PUBACK."""

    def __init__(self, url: str, client_id: str = "test-pub") -> None:
        host, port = url.rsplit("//", 1)[1].split(":")
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self.client.max_inflight_messages_set(200)
        self.client.max_queued_messages_set(0)
        self.client.connect(host, int(port))
        self.client.loop_start()

    def send(self, topic: str, payload: bytes) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=1)

    def send_batches(self, batches: list[SignalBatch]) -> None:
        infos = [self.send(b.topic, b.to_bytes()) for b in batches]
        for i in infos:
            i.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class GatewayProc:
    """``earmark gateway`` as a subprocess, so a test can SIGKILL it."""

    def __init__(
        self, broker_url: str, db_url: str, taxonomy: Path, client_id: str, log: Path, *extra: str
    ) -> None:
        self.args = [
            sys.executable,
            "-m",
            "earmark",
            "-v",
            "gateway",
            "--broker",
            broker_url,
            "--db",
            db_url,
            "--taxonomy",
            str(taxonomy),
            "--client-id",
            client_id,
            "--batch-size",
            "50",
            *extra,
        ]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProc:
        with open(self.log, "ab") as f:
            self.proc = subprocess.Popen(
                self.args,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        wait_for(
            lambda: b"subscribing" in self.log.read_bytes() or self.proc.poll() is not None,
            30,
            "gateway to subscribe",
        )
        assert self.proc.poll() is None, self.log.read_text()[-2000:]
        time.sleep(0.3)  # SUBACK follows CONNACK by a round trip
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def in_thread(fn: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t
