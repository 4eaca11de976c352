"""The dispatcher: every capability's commands are reachable and bad input is one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from earmark.cli import build_parser, main

COMMANDS = ["transcribe", "devices", "classify", "consent", "region", "ledger", "device",
            "gateway", "sim", "demo"]  # fmt: skip
GROUPED = {"bench": ["stt", "topics", "gate", "gateway", "broker", "device"], "eval": ["topics"],
           "models": ["fetch"]}  # fmt: skip


def test_every_command_is_registered() -> None:
    help_text = build_parser().format_help()
    for name in COMMANDS + list(GROUPED):
        assert name in help_text
    for group, subs in GROUPED.items():
        for sub in subs:
            with pytest.raises(SystemExit) as exit_:
                main([group, sub, "--help"])
            assert exit_.value.code == 0


def test_bad_input_is_one_line_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "earmark", "transcribe", "/nonexistent/clip.wav"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("earmark: error:")]
    assert len(errors) == 1 and "/nonexistent/clip.wav" in errors[0]


def test_no_command_prints_help_and_fails() -> None:
    assert main([]) == 2
