"""`earmark classify` and `earmark eval topics`, through the real dispatcher."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

from earmark.cli import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_classify_json_one_object_per_input_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    texts = [
        "find cheap flights to madrid",
        "what time is it",
        "i was just diagnosed with diabetes",
    ]
    code, out, _ = _run(capsys, "classify", "--json", *texts)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["text"] for r in rows] == texts
    assert [r["decision"] for r in rows] == ["publish", "none", "suppress"]
    assert rows[0]["topics"][0]["tier1"] == "Travel"
    assert rows[2]["reason"].startswith("sensitive:health")
    for r in rows:
        scores = [t["score"] for t in r["topics"]]
        assert scores == sorted(scores, reverse=True)
        assert set(r["topics"][0]) == {"id", "name", "tier1", "score"}
        assert {s["category"] for s in r["sensitive"]} >= {"health", "religion", "politics"}


def test_classify_reads_a_file_and_stdin(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "in.txt"
    f.write_text("play some jazz\n\nwhat's the best laptop for students\n")
    code, out, _ = _run(capsys, "classify", "--json", "--input", str(f))
    assert code == 0
    assert [json.loads(x)["text"] for x in out.splitlines()] == [
        "play some jazz",
        "what's the best laptop for students",
    ]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"book a hotel in rome\n")))
    code, out, _ = _run(capsys, "classify", "--input", "-")
    assert code == 0 and out.startswith("publish") and "Travel" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["classify"], "nothing to classify"),
        (["classify", ""], "no words"),
        (["classify", "ok", "  ...  "], "input 2"),
        (["classify", "--input", "/nonexistent/file.txt"], "not found"),
    ],
)
def test_classify_bad_input_is_one_clear_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("earmark: error:") and message in err and err.count("\n") == 1


def test_classify_refuses_binary_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "noise.bin"
    f.write_bytes(bytes(range(256)) * 4)
    code, _, err = _run(capsys, "classify", "--input", str(f))
    assert code == 2 and ("not UTF-8" in err or "binary" in err)


def test_eval_topics_reports_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    # every set but the sealed one, which is read once per model release (docs/topics.md)
    sets = ("--set", "held-out", "--set", "fresh-dev", "--set", "fresh-test")
    code, out, _ = _run(capsys, "eval", "topics", "--limit", "40", "--json", *sets)
    assert code == 0
    report = json.loads(out)
    assert set(report) == {"model", "held-out/text", "fresh-dev/text", "fresh-test/text"}
    for name in ("held-out/text", "fresh-dev/text", "fresh-test/text"):
        r = report[name]
        assert r["n_interest"] == r["n_none"] == r["n_sensitive"] == 40, name
        assert r["top1_tier1_accuracy"] >= 0.8, name
        assert r["none_rate"] >= 0.8, name
        # the privacy gate's filter decides: it catches at least what the model head alone does
        assert r["sensitive_recall"] >= max(0.9, r["model_sensitive_recall"]), name


def test_eval_topics_model_only_is_the_head_alone(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "eval", "topics", "--limit", "30", "--json", "--model-only", "--set", "fresh-dev"
    )
    assert code == 0 and set(json.loads(out)) == {"model", "fresh-dev/text"}
    for name, r in json.loads(out).items():
        if name != "model":
            assert r["sensitive_recall"] == r["model_sensitive_recall"], name
            assert r["false_suppression"] == r["model_false_suppression"], name


def test_bench_topics_prints_figures_against_the_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = _run(capsys, "bench", "topics", "--n", "20", "--warmup", "2")
    assert code == 0
    assert "bare session.run (baseline)" in out and "overhead ratio" in out
    assert "model file" in out and "resident memory" in out


def test_bench_topics_against_another_model_prints_their_ratio(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from earmark.device.topics import default_model_dir

    model = str(default_model_dir())
    code, out, _ = _run(capsys, "bench", "topics", "--n", "10", "--warmup", "1", "--against", model)
    assert code == 0
    (ratio,) = [line for line in out.splitlines() if line.startswith("bare topics-")]
    assert float(ratio.rsplit(" ", 1)[1].rstrip("x")) > 0


def test_eval_topics_sweep_shows_the_gate_trade_off(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "eval", "topics", "--limit", "30", "--json", "--sweep", "--set", "fresh-dev"
    )
    assert code == 0
    points = json.loads(out)["fresh-dev"]
    assert len(points) >= 5
    thresholds = [p["threshold"] for p in points]
    assert thresholds == sorted(thresholds)
    # a higher model threshold can only suppress less, of either kind
    for lo, hi in zip(points, points[1:], strict=False):
        assert hi["recall"] <= lo["recall"] and hi["false_suppression"] <= lo["false_suppression"]
    assert points[0]["recall"] > 0.8 and points[-1]["false_suppression"] < 0.2
    assert all(p["n_sensitive"] == 30 and p["n_ordinary"] == 60 for p in points)
    code, text, _ = _run(capsys, "eval", "topics", "--limit", "30", "--sweep", "--set", "fresh-dev")
    assert code == 0 and "by model threshold (policy now" in text
    assert "all together" not in text  # one set: nothing to pool


def test_sweep_pools_sets_by_their_sizes() -> None:
    """The policy's threshold rule reads every dev set's utterances together."""
    from earmark.device.topics_eval import SweepPoint, format_sweep, pooled

    points = {
        "a": [SweepPoint(0.1, 1.0, 0.0, 10, 100)],
        "b": [SweepPoint(0.1, 0.5, 0.1, 30, 300)],
    }
    (p,) = pooled(points)
    assert (p.recall, p.n_sensitive, p.n_ordinary) == (0.625, 40, 400)
    assert p.false_suppression == pytest.approx(0.075)
    assert "all together" in format_sweep(points, 0.1).splitlines()[1]
