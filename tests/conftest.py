from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import OPEN_CONFIG, Broker

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("EARMARK_SHARED_DATA", REPO.parent / "shared" / "data"))
PG_URL = os.environ.get("EARMARK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder not found at {SHARED_DATA}; set EARMARK_SHARED_DATA")
    return SHARED_DATA


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A fresh anonymous Mosquitto on a free port for one test."""
    b = Broker(tmp_path / "broker", OPEN_CONFIG).start()
    try:
        yield b
    finally:
        b.stop()
