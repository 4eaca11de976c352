"""The simulated parts on their own: clock, microphone, glasses, link proxy, scenario loader."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from earmark.cli import main
from earmark.device.hardware import Hardware, Throttle
from earmark.firmware_sim import scenario as sc
from earmark.firmware_sim.glasses import Battery, Place, SimGlasses
from earmark.firmware_sim.mic import SimMic, shape, silence
from earmark.firmware_sim.proxy import LinkProxy
from earmark.firmware_sim.simclock import SimClock

NYC = Place("nyc", 40.71, -74.0, "US", "310", "en_US", "America/New_York")


def test_clock_moves_only_forward_and_with_the_audio() -> None:
    clock = SimClock(1_000_000.0)
    clock.advance_to(999_000.0)  # the past: no-op
    assert clock.now() == 1_000_000.0
    mic = SimMic(silence(1.0) + b"\x10\x00" * 8000, clock=clock)
    frames = list(mic.frames())
    assert len(frames) == 75 and frames[-1].start == pytest.approx(1.48)
    assert clock.now() == pytest.approx(1_000_001.5)  # 1.5 s of audio = 1.5 s of device time
    assert clock.monotonic() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_mic_gain_and_noise_are_deterministic_and_clip() -> None:
    tone = (np.sin(np.arange(16000) / 5) * 20000).astype("<i2").tobytes()
    loud = np.frombuffer(shape(tone, gain_db=12), dtype="<i2")
    assert loud.max() == 32767 and loud.min() == -32768  # clipped like an ADC
    a = shape(silence(0.5), noise_dbfs=-40, seed=3)
    assert a == shape(silence(0.5), noise_dbfs=-40, seed=3) != shape(silence(0.5), noise_dbfs=-40)
    rms = np.sqrt(np.mean(np.frombuffer(a, dtype="<i2").astype(float) ** 2))
    assert 250 < rms < 400  # -40 dBFS is about 328 of 32767


def test_glasses_throttle_on_battery_and_heat() -> None:
    clock = SimClock(0.0)
    g = SimGlasses(clock, NYC, battery=Battery(level=0.5, idle_per_hour=0.1))
    assert isinstance(g, Hardware)
    assert g.throttle() is Throttle.NORMAL and not g.listening()
    clock.advance(3 * 3600 + 60)  # 0.5 - 0.3: below the 20 % upload threshold
    assert g.throttle() is Throttle.DEFER_UPLOAD
    g.set_power(battery=0.05)
    assert g.throttle() is Throttle.SKIP_CLASSIFY
    g.set_power(battery=0.9, charging=True, temp=44.0)
    assert g.throttle() is Throttle.SKIP_CLASSIFY  # heat, not charge
    g.set_power(temp=30.0)
    assert g.throttle() is Throttle.NORMAL
    assert [lvl for _, lvl in g.throttle_log] == [
        Throttle.DEFER_UPLOAD, Throttle.SKIP_CLASSIFY, Throttle.NORMAL,
    ]  # fmt: skip
    g.tap(True)
    assert g.listening()
    assert g.region_signals().sim_mcc == "310"


@pytest.fixture
def echo() -> tuple[str, int]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=lambda c=conn: _echo(c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield server.getsockname()
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _dead(s: socket.socket) -> bool:
    try:
        return s.recv(100) == b""
    except OSError:  # reset by peer
        return True


def _refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            return _dead(s)
    except OSError:
        return True


def test_proxy_forwards_captures_cuts_and_refuses(echo: tuple[str, int]) -> None:
    proxy = LinkProxy(echo)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"hello broker")
            assert s.recv(100) == b"hello broker"
            proxy.set_up(False)  # the radio dies: the open connection is reset
            assert _dead(s)
        assert bytes(proxy.upstream) == b"hello broker"
        assert _refused(proxy.port)  # no new connection while down
        proxy.set_up(True)
        proxy.latency_s = 0.01
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"again")
            assert s.recv(100) == b"again"
        proxy.loss = 1.0  # every chunk resets its connection
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            s.sendall(b"lost")
            assert _dead(s)
        assert proxy.resets >= 1
    finally:
        proxy.close()


def test_bundled_scenarios_load_and_demo_ships_its_speech() -> None:
    for path in sorted(sc.BUNDLED.glob("*.toml")):
        s = sc.load(str(path))
        assert s.events and s.users
    demo = sc.load("demo")
    assert demo.clips is not None
    for text in demo.texts():
        assert (demo.clips / sc.clip_name(text)).is_file(), text
    total = sum(p.stat().st_size for p in demo.clips.glob("*.wav"))
    assert total < 2_000_000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("users = []", "at least one [[users]]"),
        ('[[users]]\nid = "a"\nplace = "mars"', "place 'mars' is not in [places]"),
        (
            '[places.x]\nlat = 1\nlon = 2\n[[users]]\nid = "a"\nplace = "x"\n'
            '[[events]]\nat = "25:00"\nsay = "hi"',
            "at must be",
        ),
        (
            '[places.x]\nlat = 1\nlon = 2\n[[users]]\nid = "a"\nplace = "x"\n'
            '[[events]]\nat = "08:00"\nsay = "hi"\nmove = "x"',
            "exactly one of",
        ),
        ("name = [", "not valid TOML"),
    ],
)
def test_bad_scenarios_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(sc.ScenarioError) as err:
        sc.load(str(path))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cli_sim_refuses_unknown_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sim", "no-such-scenario"]) != 0
    err = capsys.readouterr().err
    assert "no scenario 'no-such-scenario'" in err and "Traceback" not in err
