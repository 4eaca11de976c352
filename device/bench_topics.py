"""`earmark bench topics`: per-utterance latency of the classifier vs the bare session call.

Baseline and earmark are measured in the same run on the same utterances, interleaved, so the
machine's load (2 shared cores) hits both alike; we report medians and p99 and the ratio of
medians. The baseline is `session.run` on pre-tokenised input, i.e. the model alone; earmark's
figure is the whole `classify` call (normalise, tokenise, run, roll up, sort, dataclasses) plus
`decide`.
"""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from earmark.device.topics import MODEL_FILE, TopicClassifier, default_model_dir
from earmark.device.topics_eval import SPLITS, load_split

MAX_BENCH_TOKENS = 32  # the target is stated for utterances up to 32 tokens


def _rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs) * 1000.0, q))


def run_bench(model: str | None, n: int = 300, warmup: int = 30, against: str | None = None) -> str:
    """``against``: another model directory (an earlier release, say) whose bare session call is
    timed on the same utterances, alternating with this model's, for a release-to-release ratio."""
    rss0 = _rss_mb()
    clf = TopicClassifier.load(model)
    rss1 = _rss_mb()
    other = TopicClassifier.load(against) if against else None
    pool = [i.text for s in SPLITS for i in load_split(s)]
    random.Random(3).shuffle(pool)
    texts = [t for t in pool if len(clf.tokenizer.encode(t).ids) <= MAX_BENCH_TOKENS][:n]
    feeds = [clf.encode(t) for t in texts]
    tokens = [int(f["input_ids"].shape[1]) for f in feeds]
    for t, f in zip(texts[:warmup], feeds[:warmup], strict=False):
        clf.session.run(None, f)
        clf.decide(clf.classify(t))
        if other:
            other.session.run(None, other.encode(t))
    bare: list[float] = []
    full: list[float] = []
    for t, f in tqdm(list(zip(texts, feeds, strict=True)), desc="bench topics", unit="utt"):
        t0 = time.perf_counter()
        clf.session.run(["interest", "sensitive"], f)
        t1 = time.perf_counter()
        clf.decide(clf.classify(t))
        t2 = time.perf_counter()
        bare.append(t1 - t0)
        full.append(t2 - t1)
    # The release comparison is its own pass, the two bare calls strictly alternating, so each
    # runs after the other model's call: timed inside the pass above, the other model always
    # ran right after this one's two warm calls and came out about 0.9x of an identical graph.
    now: list[float] = []
    then: list[float] = []
    if other:
        pairs = [(f, other.encode(t)) for t, f in zip(texts, feeds, strict=True)]
        for f, g in tqdm(pairs, desc=f"against {other.version}", unit="utt"):
            t0 = time.perf_counter()
            clf.session.run(["interest", "sensitive"], f)
            t1 = time.perf_counter()
            other.session.run(["interest", "sensitive"], g)
            t2 = time.perf_counter()
            now.append(t1 - t0)
            then.append(t2 - t1)
    rss2 = _rss_mb()
    model_path = Path(model) if model else default_model_dir()
    if model_path.is_dir():
        model_path = model_path / MODEL_FILE
    mb = os.path.getsize(model_path) / 1e6
    med_b, med_f = _pct(bare, 50), _pct(full, 50)
    lines = [
        f"topic model {clf.version}: {len(texts)} utterances, "
        f"{int(np.median(tokens))} tokens median (max {max(tokens)}), 1 thread",
        f"{'':28s}{'median ms':>10s}{'p99 ms':>10s}",
        f"{'bare session.run (baseline)':28s}{med_b:10.2f}{_pct(bare, 99):10.2f}",
        f"{'earmark classify + decide':28s}{med_f:10.2f}{_pct(full, 99):10.2f}",
        f"overhead ratio (median earmark / median bare): {med_f / med_b:.2f}x   (target <= 1.2x)",
        *(
            [
                f"alternating with {other.version}, bare calls only:",
                f"{'  ' + clf.version:28s}{_pct(now, 50):10.2f}{_pct(now, 99):10.2f}",
                f"{'  ' + other.version:28s}{_pct(then, 50):10.2f}{_pct(then, 99):10.2f}",
                f"bare {clf.version} / bare {other.version} (medians): "
                f"{_pct(now, 50) / _pct(then, 50):.2f}x",
            ]
            if other
            else []
        ),
        "targets: median <= 5 ms, p99 <= 20 ms",
        f"model file {mb:.1f} MB (target <= 30 MB)",
        f"resident memory: {rss0:.0f} MB before load, {rss1:.0f} MB loaded "
        f"(+{rss1 - rss0:.0f} MB), {rss2:.0f} MB after the run"
        + (f" (with {other.version} loaded too)" if other else ""),
    ]
    return "\n".join(lines)
