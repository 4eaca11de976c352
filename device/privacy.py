"""The privacy gate: per utterance, may any of it count toward what leaves the device?

Checks in order, each failing closed: **consent** (stored opt-in) → **region** (the
jurisdiction from GPS, account, SIM, locale and time zone; blocked, conflicting or absent
signals stop everything) → **sensitive** (model head, project rules, taxonomy flags; any layer
silences the whole utterance, innocent tags included) → **interest** (targetable tags above
the policy's score). An exception inside a check is a refusal, not a crash.

The text is used by the rule layer and then dropped; the decision holds codes and tag ids
only. Refusals are counted by reason in the ledger. ``build_parts`` wires the gate, the
window batcher and the ledger from a state dir for :mod:`earmark.device.runtime`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from earmark.device.batching import WindowBatcher
from earmark.device.consent import ConsentStore
from earmark.device.ledger import Ledger
from earmark.device.policy import Policy, load_policy
from earmark.device.region import RegionChecker
from earmark.device.sensitive import SensitiveFilter
from earmark.taxonomy import Taxonomy, load_taxonomy

if TYPE_CHECKING:
    from earmark.clock import Clock
    from earmark.device.topics import TopicScores

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionSignals:
    """What the glasses and the phone know; any may be None."""

    lat: float | None = None
    lon: float | None = None
    account_country: str | None = None
    sim_mcc: str | None = None
    locale: str | None = None
    timezone: str | None = None


@dataclass(frozen=True)
class PrivacyDecision:
    allowed: bool
    tags: tuple[tuple[str, float], ...]  # (IAB id, score) that may count toward this window
    reason: str  # "published" | "no_consent" | "region_blocked:FR" | "sensitive:health:rules" | …
    layer: str | None  # which check decided: consent | region | model | rules | taxonomy | …
    region: str | None = None  # the allowed jurisdiction (allowed decisions only)
    model: str | None = None  # topic model version that produced the tags
    why: tuple[str, ...] = ()  # per tag: its category ("Travel > Hotels"), never the text
    fired: tuple[str, ...] = ()  # every sensitive layer that fired, e.g. "health:rules"


class ConsentView(Protocol):
    def granted(self) -> bool: ...


class SuppressionLedger(Protocol):
    def record_suppression(self, reason: str, now: float, count: int = 1) -> None: ...


def _refuse(reason: str, layer: str, fired: tuple[str, ...] = ()) -> PrivacyDecision:
    return PrivacyDecision(False, (), reason, layer, fired=fired)


class PrivacyGate:
    def __init__(
        self,
        policy: Policy,
        consent: ConsentView,
        *,
        taxonomy: Taxonomy | None = None,
        ledger: SuppressionLedger | None = None,
        region: RegionChecker | None = None,
    ) -> None:
        self.policy = policy
        self.consent = consent
        self.taxonomy = taxonomy
        self.ledger = ledger
        self.region = region or RegionChecker(policy.region)
        self.sensitive = SensitiveFilter(policy.sensitive, taxonomy)

    def decide(
        self, text: str, scores: TopicScores, region: RegionSignals, now: float
    ) -> PrivacyDecision:
        try:
            decision = self._decide(text, scores, region)
        except Exception as err:  # a check that cannot decide refuses
            log.warning("privacy gate check failed (%s): utterance refused", type(err).__name__)
            decision = _refuse(f"error:{type(err).__name__}", "error")
        if not decision.allowed and self.ledger is not None:
            self.ledger.record_suppression(decision.reason, now)
        return decision

    def region_allows(self, signals: RegionSignals) -> bool:
        """May anything be transmitted from where the device is now? Fails closed.

        The runtime pauses uploads while this is False: a batch from an earlier window in an
        allowed region waits in the outbox until the device has left the blocked region.
        """
        try:
            where = self.region.decide(
                signals.lat, signals.lon, signals.account_country, signals.sim_mcc,
                signals.locale, signals.timezone,
            )  # fmt: skip
        except Exception as err:
            log.warning("region check failed (%s): uploads paused", type(err).__name__)
            return False
        return not where.blocked and where.country is not None

    def _decide(self, text: str, scores: TopicScores, signals: RegionSignals) -> PrivacyDecision:
        if not self.consent.granted():
            return _refuse("no_consent", "consent")
        where = self.region.decide(
            signals.lat, signals.lon, signals.account_country, signals.sim_mcc,
            signals.locale, signals.timezone,
        )  # fmt: skip
        if where.blocked or where.country is None:
            return _refuse(where.reason, "region")
        hits = self.sensitive.check(text, scores)
        if hits:
            fired = tuple(dict.fromkeys(f"{h.category}:{h.layer}" for h in hits))
            return _refuse(hits[0].reason, hits[0].layer, fired)
        tags: list[tuple[str, float]] = []
        why: list[str] = []
        for topic in scores.topics:
            if len(tags) >= self.policy.max_tags_per_utterance:
                break
            if topic.score < self.policy.min_score:
                continue
            if self.taxonomy is not None and self.taxonomy.status(topic.id) != "targetable":
                continue
            tags.append((topic.id, float(topic.score)))
            name = (
                topic.name if topic.tier1 in ("", topic.name) else f"{topic.tier1} > {topic.name}"
            )
            why.append(name)
        if not tags:
            return _refuse("no_interest", "interest")
        return PrivacyDecision(
            True, tuple(tags), "published", "interest", region=where.country,
            model=scores.model_version, why=tuple(why),
        )  # fmt: skip


@dataclass
class PrivacyParts:
    """Everything the runtime needs from the privacy side for one device."""

    policy: Policy
    consent: ConsentStore
    ledger: Ledger
    gate: PrivacyGate
    batcher: WindowBatcher


def build_parts(
    state_dir: Path | str,
    device_id: str,
    clock: Clock,
    *,
    policy_path: str | Path | None = None,
    taxonomy: Taxonomy | None = None,
) -> PrivacyParts:
    """Gate, batcher, consent and ledger from one state dir. PolicyError if the policy is bad."""
    policy = load_policy(policy_path)
    taxonomy = taxonomy or load_taxonomy()
    consent = ConsentStore(state_dir)
    consent.bind_device(device_id)
    ledger = Ledger(state_dir, clock)
    gate = PrivacyGate(policy, consent, taxonomy=taxonomy, ledger=ledger)
    batcher = WindowBatcher(
        device_id, policy, taxonomy.version, consent=consent, ledger=ledger,
        ldp_domain=[n.id for n in taxonomy.targetable],
    )  # fmt: skip
    return PrivacyParts(policy, consent, ledger, gate, batcher)
