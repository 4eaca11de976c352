"""Minimisation: allowed decisions become one coarse SignalBatch per closed time window.

What a batch may say is decided here: at most ``max_tags`` tags (those supported by at
least ``min_utterances`` utterances), each weighted *relative to the strongest tag of the
window* and quantised to the wire's steps, so the weights carry no count of how much the user
talked. Empty windows send nothing. A closed window leaves after a uniformly random delay
(``max_delay_s``), so send times do not mark the end of a conversation; ``flush`` (shutdown,
a finished recording) skips the delay.

With local differential privacy enabled, each batch is one tag chosen by k-ary randomised
response over the targetable tag set (the true strongest tag with probability
e^ε / (e^ε + k − 1), otherwise a uniformly random other tag), and every batch spends ε of a
lifetime budget kept in the ledger; when the next batch would exceed the budget, the device
refuses and sends nothing more.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from earmark.device.policy import Policy
from earmark.wire import SignalBatch, Tag, quantise_weight

if TYPE_CHECKING:
    from earmark.device.privacy import PrivacyDecision

log = logging.getLogger(__name__)


class ConsentView(Protocol):
    def granted(self) -> bool: ...


class BatchLedger(Protocol):
    """What the batcher tells the ledger (earmark.device.ledger.Ledger implements it)."""

    def record_suppression(self, reason: str, now: float, count: int = 1) -> None: ...

    def record_inference(self, window_start: int, tag: str, why: str, utterances: int) -> None: ...

    def spend(self, epsilon: float, lifetime_budget: float) -> bool: ...


@dataclass
class _Window:
    start: int
    totals: dict[str, float] = field(default_factory=dict)  # tag → summed score
    counts: dict[str, int] = field(default_factory=dict)  # tag → utterances
    why: dict[str, dict[str, int]] = field(default_factory=dict)  # tag → category → utterances
    region: str | None = None
    model: str | None = None
    release_at: float | None = None


def randomised_response(true_tag: str, domain: Sequence[str], epsilon: float,
                        rng: random.Random) -> str:  # fmt: skip
    """k-ary randomised response: ε-LDP for one tag out of ``domain``."""
    k = len(domain)
    if k < 2:
        return true_tag
    p_true = math.exp(epsilon) / (math.exp(epsilon) + k - 1)
    if true_tag in domain and rng.random() < p_true:
        return true_tag
    others = [t for t in domain if t != true_tag]
    return rng.choice(others)


class WindowBatcher:
    def __init__(
        self,
        device_id: str,
        policy: Policy,
        taxonomy_version: str,
        *,
        consent: ConsentView,
        ledger: BatchLedger | None = None,
        ldp_domain: Sequence[str] = (),
        rng: random.Random | None = None,
    ) -> None:
        self.device_id = device_id
        self.policy = policy
        self.taxonomy_version = taxonomy_version
        self.consent = consent
        self.ledger = ledger
        self.ldp_domain = tuple(sorted(ldp_domain))
        self.rng = rng or random.SystemRandom()
        self.window_s = policy.window_s
        self._open: dict[int, _Window] = {}
        if policy.ldp_enabled and len(self.ldp_domain) < 2:
            raise ValueError("local differential privacy needs the targetable tag set")

    def window_start(self, now: float) -> int:
        return int(now // self.window_s) * self.window_s

    @property
    def open_windows(self) -> int:
        return len(self._open)

    def add(self, decision: PrivacyDecision, now: float) -> None:
        if not decision.allowed or not decision.tags:
            return
        if not self.consent.granted():
            self.discard(now, "consent_revoked")
            return
        w = self._open.setdefault(self.window_start(now), _Window(self.window_start(now)))
        n = len(decision.tags)
        whys = decision.why if len(decision.why) == n else ("",) * n
        for (tag, score), why in zip(decision.tags, whys, strict=True):
            w.totals[tag] = w.totals.get(tag, 0.0) + score
            w.counts[tag] = w.counts.get(tag, 0) + 1
            cats = w.why.setdefault(tag, {})
            cats[why or "interest"] = cats.get(why or "interest", 0) + 1
        w.region = decision.region or w.region
        w.model = decision.model or w.model

    def discard(self, now: float, reason: str) -> int:
        """Drop every open window (consent revoked); counted in the ledger, returns how many."""
        n = len(self._open)
        self._open.clear()
        if n and self.ledger is not None:
            self.ledger.record_suppression(f"window_discarded:{reason}", now, n)
        return n

    def close_due(self, now: float) -> list[SignalBatch]:
        """Batches of windows that have closed and whose random delay has passed."""
        if not self.consent.granted():
            self.discard(now, "consent_revoked")
            return []
        out = []
        for start in sorted(self._open):
            w = self._open[start]
            end = start + self.window_s
            if now < end:
                continue
            if w.release_at is None:
                w.release_at = end + self.rng.uniform(0.0, self.policy.max_delay_s)
            if now >= w.release_at:
                del self._open[start]
                batch = self._build(w, now)
                if batch is not None:
                    out.append(batch)
        return out

    def flush(self, now: float) -> list[SignalBatch]:
        """Every open window now, without the delay (shutdown, end of a recording)."""
        if not self.consent.granted():
            self.discard(now, "consent_revoked")
            return []
        windows = [self._open.pop(s) for s in sorted(self._open)]
        return [b for b in (self._build(w, now) for w in windows) if b is not None]

    def _build(self, w: _Window, now: float) -> SignalBatch | None:
        p = self.policy
        support = [t for t, n in w.counts.items() if n >= p.min_utterances]
        if not support or w.region is None or w.model is None:
            self._suppress("window_below_support", now)
            return None
        ranked = sorted(support, key=lambda t: (-w.totals[t], t))[: p.max_tags]
        top = w.totals[ranked[0]]
        epsilon = None
        if p.ldp_enabled:
            if self.ledger is None or not self.ledger.spend(p.ldp_epsilon, p.ldp_lifetime_budget):
                log.warning("LDP budget exhausted: window not sent")
                self._suppress("ldp_budget_exhausted", now)
                return None
            reported = randomised_response(ranked[0], self.ldp_domain, p.ldp_epsilon, self.rng)
            tags: tuple[Tag, ...] = (Tag(reported, 1.0),)
            epsilon = p.ldp_epsilon
            whys = {reported: {f"randomised response (epsilon {p.ldp_epsilon:g})": 1}}
        else:
            tags = tuple(Tag(t, quantise_weight(w.totals[t] / top)) for t in ranked)
            whys = {t: w.why.get(t, {}) for t in ranked}
        if self.ledger is not None:
            for tag, cats in whys.items():
                for why, n in cats.items():
                    self.ledger.record_inference(w.start, tag, why, n)
        return SignalBatch(
            device_id=self.device_id,
            seq=0,  # the outbox numbers messages
            taxonomy=self.taxonomy_version,
            model=w.model,
            window_start=w.start,
            window_s=self.window_s,
            region=w.region,
            tags=tags,
            ldp_epsilon=epsilon,
        )

    def _suppress(self, reason: str, now: float) -> None:
        if self.ledger is not None:
            self.ledger.record_suppression(reason, now)
