"""What a simulation shows: a timeline while it runs, a summary at the end, an optional report.

Why a separate printer: the world runner only emits :class:`Observation` records (what was
said in the script, what the gate decided, what was queued, sent, dropped, and what the
gateway's profile became); how they look on a terminal, in a JSON lines file or in a plot is
this module's business. No transcript ever appears here: ``said`` is the scenario's own
script, which is test input, and decisions carry reason codes and category names only.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from earmark.errors import EarmarkError
from earmark.firmware_sim.world import Observation, World
from earmark.taxonomy import Taxonomy

EXPLAIN = {
    "no_consent": "the wearer has not consented: nothing is processed for sending",
    "no_interest": "no targetable interest scored high enough",
    "nothing heard": "the microphone was closed (speech not addressed to the glasses)",
    "throttled": "battery or heat too low to process speech",
    "empty": "the recogniser heard no words",
}


def explain(reason: str) -> str:
    if reason in EXPLAIN:
        return EXPLAIN[reason]
    head, _, rest = reason.partition(":")
    if head == "sensitive":
        cat, _, layer = rest.partition(":")
        by = layer or "filter"
        return f"a sensitive topic ({cat}, caught by the {by} layer): the whole utterance dropped"
    if head == "region_blocked":
        return f"the device was in {rest} (EU/EEA/UK): nothing leaves there"
    if head.startswith("near_blocked"):
        return f"the device was at or near a blocked coast or border ({rest}): fail closed"
    if head in ("no_signal", "conflict", "open_sea", "unknown") or "gps" in rest:
        return "the device could not tell where it is (signals absent, at sea or in conflict)"
    if head == "window_discarded":
        return f"an open window was discarded ({rest})"
    return reason


class Timeline:
    """Collects observations; prints each as it happens unless ``quiet``."""

    def __init__(self, taxonomy: Taxonomy, out: TextIO = sys.stdout, quiet: bool = False) -> None:
        self.taxonomy = taxonomy
        self.out = out
        self.quiet = quiet
        self.records: list[Observation] = []
        self.day0: float | None = None

    def name(self, tag: str) -> str:
        try:
            n = self.taxonomy.node(tag)
        except EarmarkError:
            return tag
        return n.name if n.tier1 in ("", n.name) else f"{n.tier1} > {n.name}"

    def __call__(self, o: Observation) -> None:
        self.records.append(o)
        if not self.quiet:
            print(self.format(o), file=self.out, flush=True)

    def clock(self, t: float) -> str:
        if self.day0 is None:
            self.day0 = t // 86400 * 86400
        day, sec = divmod(int(t - self.day0), 86400)
        hms = f"{sec // 3600:02d}:{sec % 3600 // 60:02d}:{sec % 60:02d}"
        return hms if day == 0 else f"+{day}d {hms}"

    def format(self, o: Observation) -> str:
        d = o.detail
        head = f"{self.clock(o.t):>12}  {o.device:<12} "
        if o.kind == "said":
            mark = "" if d["triggered"] else "  (not to the glasses)"
            return f"{head}said      “{d['text']}”{mark}"
        if o.kind == "decided":
            if d["allowed"]:
                return f"{head}decided   → {', '.join(d['tags'])}"
            return f"{head}decided   ✗ {d['reason']}"
        if o.kind == "queued":
            return f"{head}queued    {d['batches']} window batch(es) in the outbox"
        if o.kind == "sent":
            tags = ", ".join(f"{self.name(t)} {w:g}" for t, w in d["tags"]) or "-"
            return f"{head}sent      seq {d['seq']} {d['message']}: {tags} ({d['bytes']} B)"
        if o.kind == "dropped":
            return f"{head}dropped   seq {d['seq']} {d['message']}: {d['reason']}"
        if o.kind == "profile":
            top = ", ".join(f"{self.name(i['tag'])} {i['score']:.2f}" for i in d["interests"][:5])
            return f"{head}profile   {top or '(empty)'}"
        if o.kind == "power":
            return f"{head}power     {d['state']}" + (
                f" ({d['missed']} missed)" if "missed" in d else ""
            )
        what = d.get("what")
        rest = {k: v for k, v in d.items() if k != "what"}
        if what == "link":
            q = (
                f" latency {rest['latency_s'] * 1000:g} ms, loss {rest['loss']:g}"
                if rest["up"]
                else ""
            )
            return f"{head}link      {'up' if rest['up'] else 'down'}{q}"
        if what == "throttle":
            return f"{head}throttle  {rest['level']}"
        args = " ".join(f"{k}={v}" for k, v in rest.items())
        return f"{head}{what:<9} {args}"

    # --- the end ----------------------------------------------------------------------------

    def summary(self, world: World) -> dict[str, Any]:
        users = sorted({d.plan.user_id for d in world.devices})
        profiles = {u: world.services.profile(u, world.clock.now()) for u in users}
        suppressed: Counter[str] = Counter()
        for o in self.records:
            if o.kind == "decided" and not o.detail["allowed"]:
                suppressed[o.detail["reason"]] += 1
        for dev in world.devices:
            for reason, n in dev.parts.ledger.suppressions().items():
                if reason.startswith("window"):
                    suppressed[reason] += n
        dropped: Counter[str] = Counter(
            r[3] for dev in world.devices for r in dev.parts.ledger.dropped()
        )
        recon = {d.id: world.reconcile(d) for d in world.devices}
        sent_bytes = sum(len(d.proxy.upstream) for d in world.devices)
        return {
            "scenario": world.scenario.name,
            "devices": len(world.devices),
            "profiles": profiles,
            "suppressed": dict(suppressed),
            "dropped_unsent": dict(dropped),
            "reconcile": recon,
            "bytes_from_devices": sent_bytes,
            "simulated_hours": round(world.clock.elapsed / 3600, 2),
        }

    def print_summary(self, s: dict[str, Any], max_users: int = 5) -> None:
        p = lambda *a: print(*a, file=self.out)  # noqa: E731
        p("")
        for user, prof in list(s["profiles"].items())[:max_users]:
            p(f"Profile of {user} at the gateway (decayed to the end of the day):")
            for i in prof["interests"] or []:
                p(f"  {self.name(i['tag']):<40} {i['score']:.2f}")
            if not prof["interests"]:
                p("  (empty)")
        if len(s["profiles"]) > max_users:
            p(f"  … and {len(s['profiles']) - max_users} more users")
        p("Suppressed on the device, and why:")
        for reason, n in sorted(s["suppressed"].items(), key=lambda kv: (-kv[1], kv[0])):
            p(f"  {n:>4} × {reason:<28} {explain(reason)}")
        if not s["suppressed"]:
            p("  nothing")
        if s["dropped_unsent"]:
            p("Dropped from the outbox before sending (recorded in the ledger):")
            for reason, n in sorted(s["dropped_unsent"].items()):
                p(f"  {n:>4} × {reason}")
        recon = s["reconcile"].values()
        ok = sum(1 for r in recon if r["match"])
        sent = sum(r["sent"] for r in recon)
        p(
            f"Ledgers vs gateway: {ok}/{len(recon)} devices match exactly; {sent} messages sent, "
            f"{s['bytes_from_devices']} bytes on the wire from the devices over "
            f"{s['simulated_hours']} simulated hours"
        )

    def write_report(self, directory: Path, s: dict[str, Any]) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        lines = directory / "timeline.jsonl"
        with lines.open("w") as f:
            for o in self.records:
                f.write(json.dumps(asdict(o), default=str) + "\n")
        summary = directory / "summary.json"
        summary.write_text(json.dumps(s, indent=2, default=str))
        written = [lines, summary]
        plot = self.plot(directory / "profiles.png")
        if plot is not None:
            written.append(plot)
        return written

    def plot(self, path: Path, max_users: int = 6) -> Path | None:
        """Each user's profile over simulated time (needs matplotlib: pip install earmark[plot])."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(
                "(no plot: matplotlib is not installed; pip install 'earmark[plot]')", file=self.out
            )
            return None
        series: dict[str, dict[str, list[tuple[float, float]]]] = {}
        for o in self.records:
            if o.kind == "profile":
                tags = series.setdefault(o.device, {})
                for i in o.detail["interests"]:
                    tags.setdefault(i["tag"], []).append((o.t, i["score"]))
        users = sorted(series)[:max_users] or ["(no profile)"]
        fig, axes = plt.subplots(len(users), 1, figsize=(9, 2.6 * len(users)), squeeze=False)
        for ax, user in zip(axes[:, 0], users, strict=False):
            for tag, pts in sorted(series.get(user, {}).items()):
                hours = [(t - (self.day0 or 0)) / 3600 for t, _ in pts]
                ax.step(hours, [v for _, v in pts], where="post", marker="o", label=self.name(tag))
            ax.set_title(f"profile of {user}")
            ax.set_xlabel("simulated hours since midnight (UTC)")
            ax.set_ylabel("score")
            if series.get(user):
                ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path
