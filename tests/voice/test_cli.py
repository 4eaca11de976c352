"""The voice commands as a user runs them: transcribe, models fetch."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from earmark.cli import main
from earmark.device.vosk_models import is_model_dir

pytestmark = pytest.mark.slow


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_transcribe_json_one_object_per_utterance(
    capsys: pytest.CaptureFixture[str], clips: list[tuple[Path, str]]
) -> None:
    files = [str(p) for p, _ in clips if p.name in ("003.wav", "goforward.raw")]
    code, out, err = run(capsys, "transcribe", "--engine", "pocketsphinx", "--json", *files)
    assert code == 0
    assert "using pocketsphinx (bundled en-us model)" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in rows] == files
    assert all(set(r) == {"file", "start", "end", "text", "engine"} for r in rows)
    assert all(r["engine"] == "pocketsphinx" and r["start"] < r["end"] for r in rows)
    assert rows[1]["text"] == "go forward ten meters"


def test_transcribe_readable(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from earmark.device.audio import write_wav

    silent = write_wav(tmp_path / "quiet.wav", b"\x00\x00" * 16000)
    code, out, _ = run(capsys, "transcribe", "--engine", "pocketsphinx", str(silent))
    assert code == 0
    assert out.splitlines() == [str(silent), "  (no speech found)"]


def test_bad_files_are_reported_and_the_rest_transcribed(
    capsys: pytest.CaptureFixture[str], clips: list[tuple[Path, str]], tmp_path: Path
) -> None:
    good = str(next(p for p, _ in clips if p.name == "goforward.raw"))
    wav = next(p for p, _ in clips if p.name == "005.wav").read_bytes()
    bad = {
        "missing.wav": None,
        "notes.wav": b"these are my notes, not audio at all",
        "empty.wav": b"",
        "cut.wav": wav[:3000],
        "mulaw.wav": wav[:20] + b"\x07\x00" + wav[22:],
    }
    paths = []
    for name, data in bad.items():
        p = tmp_path / name
        if data is not None:
            p.write_bytes(data)
        paths.append(str(p))
    code, out, err = run(
        capsys, "transcribe", "--engine", "pocketsphinx", "--json", paths[0], good, *paths[1:]
    )
    assert code != 0
    (only,) = [json.loads(x) for x in out.splitlines()]
    assert only["file"] == good and only["text"].startswith("go forward ten")
    errors = [line for line in err.splitlines() if line.startswith("earmark: error:")]
    assert len(errors) == len(bad)
    for line, path, problem in zip(
        errors,
        paths,
        ["no such file", "not a WAV file", "zero-length", "truncated", "unsupported encoding"],
        strict=True,
    ):
        assert path in line and problem in line


def test_unknown_vosk_model_dir_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run(capsys, "transcribe", "--vosk-model", str(tmp_path), "x.wav")
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and "not a Vosk model folder" in err


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server over a folder (the stand-in for the model download site)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def model_zip(path: Path, folder: str = "vosk-model-small-en-us-0.15", extra: str = "") -> str:
    """A small archive shaped like the official one; returns its SHA-256."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{folder}/am/final.mdl", b"\x00" * 1024)
        zf.writestr(f"{folder}/conf/model.conf", "--min-active=200\n")
        zf.writestr(f"{folder}/README", "test model\n")
        if extra:
            zf.writestr(extra, "escape\n")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_models_fetch_downloads_verifies_and_unpacks(
    capsys: pytest.CaptureFixture[str], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_root
    digest = model_zip(root / "m.zip")
    dest = tmp_path / "vosk"
    code, out, _ = run(capsys, "models", "fetch", "vosk-small-en-us", "--url",
                       f"{base}/m.zip", "--sha256", digest, "--dest", str(dest))  # fmt: skip
    assert code == 0
    model = dest / "vosk-model-small-en-us-0.15"
    assert is_model_dir(model) and (model / "README").read_text() == "test model\n"
    assert str(model) in out
    assert [p.name for p in dest.iterdir()] == [model.name]  # no download left behind


def test_models_fetch_refuses_a_wrong_checksum(
    capsys: pytest.CaptureFixture[str], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_root
    model_zip(root / "m.zip")
    dest = tmp_path / "vosk"
    code, _, err = run(capsys, "models", "fetch", "vosk-small-en-us", "--url",
                       f"{base}/m.zip", "--sha256", "0" * 64, "--dest", str(dest))  # fmt: skip
    assert code != 0 and "SHA-256 mismatch" in err and "nothing was unpacked" in err
    assert list(dest.iterdir()) == []


def test_models_fetch_refuses_paths_outside_the_destination(
    capsys: pytest.CaptureFixture[str], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    root, base = http_root
    digest = model_zip(root / "evil.zip", extra="../../escaped.txt")
    dest = tmp_path / "a" / "b" / "vosk"
    code, _, err = run(capsys, "models", "fetch", "vosk-small-en-us", "--url",
                       f"{base}/evil.zip", "--sha256", digest, "--dest", str(dest))  # fmt: skip
    assert code != 0 and "unsafe path" in err
    assert not list(tmp_path.rglob("escaped.txt"))


def test_models_fetch_errors(
    capsys: pytest.CaptureFixture[str], http_root: tuple[Path, str], tmp_path: Path
) -> None:
    _, base = http_root
    code, _, err = run(capsys, "models", "fetch", "vosk-huge-klingon")
    assert code != 0 and "unknown model" in err
    code, _, err = run(capsys, "models", "fetch", "vosk-small-en-us", "--url",
                       f"{base}/missing.zip", "--dest", str(tmp_path))  # fmt: skip
    assert code != 0 and "download failed" in err and "404" in err
