"""`earmark consent`, `earmark region`, `earmark ledger` and `earmark bench gate`."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from earmark.cli import Cli
from earmark.errors import EarmarkError


def add_region_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The signals a pair of glasses and its phone have; `region` and `device` share them."""
    p.add_argument("--lat", type=float)
    p.add_argument("--lon", type=float)
    p.add_argument("--country", help="account country, ISO 3166-1 alpha-2")
    p.add_argument("--mcc", help="SIM mobile country code, e.g. 310")
    p.add_argument("--locale", help="e.g. en_US")
    p.add_argument("--tz", help="IANA time zone, e.g. America/New_York")


def register(cli: Cli) -> None:
    state_help = "state dir (default $EARMARK_HOME or ~/.local/share/earmark)"
    c = cli.command("consent", cmd_consent, help="show, grant or revoke consent on this device")
    c.add_argument("action", choices=("status", "grant", "revoke"))
    c.add_argument("--state", type=Path, help=state_help)
    c.add_argument("--device-id", help="the device id deletion requests are sent as")
    c.add_argument("--json", action="store_true", help="print JSON")

    r = cli.command(
        "region", cmd_region, help="the jurisdiction the privacy gate decides for these signals"
    )
    add_region_arguments(r)
    r.add_argument("--policy", help="policy file (default: the shipped one, or $EARMARK_POLICY)")
    r.add_argument("--json", action="store_true", help="print JSON")

    g = cli.command("ledger", cmd_ledger, help="what this device sent, held back and why")
    g.add_argument("--state", type=Path, help=state_help)
    g.add_argument("--json", action="store_true", help="print JSON")

    b = cli.command(
        "gate",
        cmd_bench_gate,
        help="privacy gate cost per utterance vs a bare tag filter, sensitive recall and "
        "false suppression, region table accuracy",
        group="bench",
    )
    b.add_argument("-n", "--utterances", type=int, default=2000, help="utterances timed")
    b.add_argument("--rounds", type=int, default=5)
    b.add_argument(
        "--no-model", action="store_true", help="do not load the topic model (rules only)"
    )
    b.add_argument("--json", action="store_true", help="also print the figures as JSON")


def _state(args: argparse.Namespace) -> Path:
    from earmark.device.outbox import default_state_dir

    return args.state or default_state_dir()


def cmd_consent(args: argparse.Namespace) -> int:
    from earmark.device.consent import ConsentStore

    state_dir = _state(args)
    store = ConsentStore(state_dir)
    now = time.time()
    out: dict[str, object]
    if args.action == "grant":
        s = store.grant(now, args.device_id)
        out = {"granted": True, "device_id": s.device_id}
        text = "consent granted: coarse interest tags may now leave this device"
    elif args.action == "revoke":
        from earmark.device.ledger import Ledger
        from earmark.device.outbox import Outbox

        ledger = Ledger(state_dir)
        outbox = Outbox(state_dir, ledger=ledger)
        try:
            res = store.revoke(now, outbox, args.device_id)
        finally:
            outbox.close()
            ledger.close()
        out = {"granted": False, "discarded": res.discarded, "deletion_seq": res.deletion_seq}
        text = f"consent revoked: nothing more is sent; {res.discarded} queued batch(es) discarded"
        if res.deletion_seq is None:
            text += "; no device id known, so no deletion request was queued (pass --device-id)"
        else:
            text += f"; deletion request queued as seq {res.deletion_seq}"
    else:
        s = store.state()
        out = {"granted": s.granted, "device_id": s.device_id, "changed_at": s.changed_at}
        if s.note:
            out["note"] = s.note
        when = _utc(s.changed_at) if s.changed_at else "never"
        text = f"consent: {'granted' if s.granted else 'not granted'} (since {when})"
        text += f"{'; ' + s.note if s.note else ''}; device id: {s.device_id or 'none yet'}"
    print(json.dumps(out) if args.json else text)
    return 0


def cmd_region(args: argparse.Namespace) -> int:
    from earmark.device.policy import load_policy
    from earmark.device.region import RegionChecker

    if (args.lat is None) != (args.lon is None):
        raise EarmarkError("--lat and --lon go together")
    if args.lat is not None and not (-90 <= args.lat <= 90 and -180 <= args.lon <= 180):
        raise EarmarkError(f"--lat {args.lat} --lon {args.lon} is not a position on Earth")
    checker = RegionChecker(load_policy(args.policy).region)
    res = checker.decide(args.lat, args.lon, args.country, args.mcc, args.locale, args.tz)
    if args.json:
        print(json.dumps(res.to_dict()))
    else:
        named = ", ".join(f"{s}={cc or '?'}" for s, cc in res.signals) or "no signals"
        verdict = "BLOCKED" if res.blocked else "allowed"
        print(f"{res.country or 'no country'}: {verdict} ({res.reason}); signals: {named}")
    return 0


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")


def cmd_ledger(args: argparse.Namespace) -> int:
    from earmark.device.ledger import Ledger

    state_dir = _state(args)
    if not (state_dir / Ledger.FILENAME).exists():
        raise EarmarkError(f"no ledger in {state_dir}: this device has not run the gate yet")
    ledger = Ledger(state_dir)
    try:
        sent, dropped = ledger.sent(), ledger.dropped()
        suppressed, spent = ledger.suppressions(), ledger.budget_spent()
    finally:
        ledger.close()
    if args.json:
        print(json.dumps({
            "sent": [{"seq": r.seq, "kind": r.kind, "sent_at": r.sent_at, "message": r.message,
                      "why": r.why} for r in sent],
            "dropped": [{"seq": s, "kind": k, "window_start": w, "reason": why, "at": at}
                        for s, k, w, why, at in dropped],
            "suppressed": suppressed,
            "ldp_budget_spent": spent,
        }))  # fmt: skip
        return 0
    names = _tag_names()
    print(f"sent ({len(sent)}):")
    for r in sent:
        m = r.message
        if r.kind == "deletion_request":
            print(f"  seq {r.seq}  {_utc(r.sent_at)}  deletion request for the profile")
            continue
        start = m["window_start"]
        print(f"  seq {r.seq}  {_utc(r.sent_at)}  window {_utc(start)} +{m['window_s'] // 60} min"
              f"  region {m['region']}  model {m['model']}"
              f"{'  ldp ε=' + str(m['ldp']['epsilon']) if m['ldp'] else ''}")  # fmt: skip
        for t in m["tags"]:
            why = "; ".join(r.why.get(t["id"], [])) or "not recorded"
            print(f"      {t['id']:>7} {names.get(t['id'], '?'):<28} w={t['w']:<5} why: {why}")
    print(f"dropped unsent ({len(dropped)}):")
    for s, kind, _w, why, at in dropped:
        print(f"  seq {s}  {kind}  {why}  {_utc(at)}")
    print("held back (utterances or windows, by reason; counts only):")
    for reason, n in suppressed.items():
        print(f"  {n:>6}  {reason}")
    print(f"local differential privacy budget spent: {spent:g}")
    return 0


def _tag_names() -> dict[str, str]:
    try:
        from earmark.taxonomy import load_taxonomy

        return {n.id: n.name for n in load_taxonomy().nodes.values()}
    except EarmarkError:
        return {}


def cmd_bench_gate(args: argparse.Namespace) -> int:
    from earmark.device.bench_gate import run_bench

    return run_bench(args.utterances, args.rounds, use_model=not args.no_model, as_json=args.json)
