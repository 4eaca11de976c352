"""`earmark bench gate`: what the privacy gate costs and how well it holds.

* **Cost per utterance**: ``PrivacyGate.decide`` (consent stat, region lookup cached per fix,
  the three sensitive layers, the interest filter, the ledger write for refusals) on held-out
  utterances with their real topic scores, against a baseline in the same run: a bare tag
  filter (threshold and top-k on the same scores, no privacy at all). Medians and p99 over
  ``rounds`` rounds; the first, uncached region lookup per fix is timed on its own.
* **Sensitive recall and false suppression** on the held-out sets of
  :mod:`earmark.device.sensitive_eval`, per layer and combined, per category.
* **Region table accuracy** over :data:`earmark.device.region_cases.CASES`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

from tqdm import tqdm

from earmark.device.privacy import RegionSignals
from earmark.device.region import RegionChecker
from earmark.device.region_cases import CASES
from earmark.device.sensitive_eval import ordinary_set, sensitive_set


@dataclass(frozen=True)
class _Score:  # the TopicScore shape, for runs without the topic model
    id: str
    name: str
    tier1: str
    score: float


@dataclass(frozen=True)
class _Scores:
    topics: tuple[_Score, ...]
    sensitive: dict[str, float]
    model_version: str


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def _scores_for(texts: list[str], use_model: bool) -> tuple[list[object], str]:
    if use_model:
        try:
            from earmark.device.topics import TopicClassifier

            clf = TopicClassifier.load()
        except Exception as err:  # the bench still measures rules, region and cost
            print(f"topic model unavailable ({err}); model layer off")
        else:
            out = [clf.classify(t) for t in tqdm(texts, desc="classify", unit="utt", leave=False)]
            return out, clf.version
    neutral = _Scores((_Score("653", "Travel", "Travel", 0.9),), {}, "none")
    return [neutral] * len(texts), "none (no model)"


def _bare_filter(scores: object, min_score: float, k: int) -> list[tuple[str, float]]:
    return [(t.id, t.score) for t in scores.topics if t.score >= min_score][:k]  # type: ignore[attr-defined]


def run_bench(n: int, rounds: int, use_model: bool = True, as_json: bool = False) -> int:
    from earmark.clock import SystemClock
    from earmark.device.privacy import build_parts

    sens, ordinary = sensitive_set("heldout"), ordinary_set("heldout")
    utts = sens + ordinary
    scores, model = _scores_for([u.text for u in utts], use_model)
    figures: dict[str, object] = {"model": model, "utterances": len(utts)}
    with tempfile.TemporaryDirectory() as state:
        parts = build_parts(state, "bench-device", SystemClock())
        parts.consent.grant(time.time())
        gate, policy = parts.gate, parts.policy
        where = RegionSignals(40.7128, -74.0060, "US", "310", "en_US", "America/New_York")

        # --- recall and false suppression --------------------------------------------
        layer_hits: dict[str, Counter[str]] = defaultdict(Counter)
        per_cat: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        per_src: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        false_supp: Counter[str] = Counter()
        for u, s in zip(utts, scores, strict=True):
            hits = gate.sensitive.check(u.text, s)  # type: ignore[arg-type]
            layers = {h.layer for h in hits}
            key = "sensitive" if u.category else "ordinary"
            for layer in layers:
                layer_hits[key][layer] += 1
            if u.category:
                per_cat[u.category][0] += bool(hits)
                per_cat[u.category][1] += 1
                src = u.source.split("/")[0]
                per_src[src][0] += bool(hits)
                per_src[src][1] += 1
            elif hits:
                false_supp[sorted(layers)[0]] += 1
            layer_hits[key]["any"] += bool(hits)
        recall = layer_hits["sensitive"]["any"] / len(sens)
        fsr = layer_hits["ordinary"]["any"] / len(ordinary)
        figures["recall"] = recall
        figures["false_suppression"] = fsr
        figures["recall_by_layer"] = {k: v / len(sens) for k, v in layer_hits["sensitive"].items()}
        figures["false_suppression_by_layer"] = {
            k: v / len(ordinary) for k, v in layer_hits["ordinary"].items()
        }
        figures["recall_by_category"] = {c: h / t for c, (h, t) in sorted(per_cat.items())}
        figures["recall_by_source"] = {c: [h, t] for c, (h, t) in sorted(per_src.items())}

        # --- region table -----------------------------------------------------------------
        checker = RegionChecker(policy.region)
        right, first = 0, []
        for c in CASES:
            t0 = time.perf_counter_ns()
            res = checker.decide(c.lat, c.lon)
            first.append((time.perf_counter_ns() - t0) / 1e6)
            right += c.country_ok(res.country) and res.blocked == c.blocked
        figures["region_table"] = f"{right}/{len(CASES)}"
        figures["region_first_fix_ms"] = {"median": statistics.median(first),
                                          "p99": _pct(first, 0.99)}  # fmt: skip

        # --- cost per utterance -----------------------------------------------------------
        idx = [i % len(utts) for i in range(n)]
        gate_ms: list[float] = []
        bare_ms: list[float] = []
        gate_rounds: list[float] = []
        bare_rounds: list[float] = []
        outcomes: Counter[str] = Counter()
        for _ in tqdm(range(rounds), desc="timing rounds", unit="round", leave=False):
            g, b = [], []
            for i in idx:
                text, s = utts[i].text, scores[i]
                t0 = time.perf_counter_ns()
                _bare_filter(s, policy.min_score, policy.max_tags_per_utterance)
                t1 = time.perf_counter_ns()
                d = gate.decide(text, s, where, time.time())  # type: ignore[arg-type]
                t2 = time.perf_counter_ns()
                b.append((t1 - t0) / 1e6)
                g.append((t2 - t1) / 1e6)
                outcomes[d.reason.split(":")[0]] += 1
            gate_rounds.append(statistics.median(g))
            bare_rounds.append(statistics.median(b))
            gate_ms += g
            bare_ms += b
        parts.ledger.close()
    gm, bm = statistics.median(gate_rounds), statistics.median(bare_rounds)
    figures["gate_ms"] = {"median": gm, "p99": _pct(gate_ms, 0.99)}
    figures["bare_filter_ms"] = {"median": bm, "p99": _pct(bare_ms, 0.99)}
    figures["gate_vs_bare"] = gm / bm if bm else None
    figures["outcomes"] = dict(outcomes)
    _print(figures, len(sens), len(ordinary), n, rounds)
    if as_json:
        print(json.dumps(figures))
    return 0


def _print(f: dict, n_sens: int, n_ord: int, n: int, rounds: int) -> None:
    g, b = f["gate_ms"], f["bare_filter_ms"]
    print(f"earmark bench gate  (topic model: {f['model']})")
    print(f"cost per utterance, {n} utterances x {rounds} rounds (median of round medians; p99)")
    print(f"  privacy gate      {g['median'] * 1000:8.1f} µs   p99 {g['p99'] * 1000:8.1f} µs")
    print(f"  bare tag filter   {b['median'] * 1000:8.1f} µs   p99 {b['p99'] * 1000:8.1f} µs")
    print(f"  ratio gate/bare   {f['gate_vs_bare']:8.1f} x    target: gate median ≤ 1000 µs")
    r = f["region_first_fix_ms"]
    print(f"  region lookup, first fix (uncached): median {r['median'] * 1000:.0f} µs,"
          f" p99 {r['p99'] * 1000:.0f} µs; later utterances hit the per-fix cache")  # fmt: skip
    print(f"sensitive recall   {f['recall']:.4f} on {n_sens} held-out sensitive utterances"
          "  (target ≥ 0.99)")  # fmt: skip
    print(f"false suppression  {f['false_suppression']:.4f} on {n_ord} ordinary interest"
          " utterances  (target ≤ 0.05)")  # fmt: skip
    print("  by layer, recall: " + ", ".join(
        f"{k} {v:.3f}" for k, v in sorted(f["recall_by_layer"].items())))  # fmt: skip
    print("  by layer, false suppression: " + ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(f["false_suppression_by_layer"].items())))  # fmt: skip
    print("  recall by category: " + ", ".join(
        f"{k} {v:.3f}" for k, v in f["recall_by_category"].items()))  # fmt: skip
    print("  recall by source: " + ", ".join(
        f"{k} {h}/{t}" for k, (h, t) in f["recall_by_source"].items()))  # fmt: skip
    print(f"region table       {f['region_table']} right")
