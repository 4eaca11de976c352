"""`earmark demo` and `earmark sim` as a newcomer runs them: own broker, own gateway, cleaned up."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from earmark.cli import main
from tests.support.demo import check_demo_output

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_without_piper(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from earmark.firmware_sim import speech

    def no_piper(text: str) -> Path:  # the demo must use its shipped clips
        raise AssertionError(f"the demo tried to synthesise {text!r}")

    monkeypatch.setattr(speech, "synthesize", no_piper)
    before = set(Path(tempfile.gettempdir()).glob("earmark-sim-*"))
    assert main(["demo", "--report", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    check_demo_output(out)
    assert set(Path(tempfile.gettempdir()).glob("earmark-sim-*")) == before  # cleaned up
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["reconcile"]["alice-g000"]["match"]
    assert (tmp_path / "report" / "profiles.png").stat().st_size > 10_000
    lines = (tmp_path / "report" / "timeline.jsonl").read_text().splitlines()
    assert any(json.loads(line)["kind"] == "sent" for line in lines)
