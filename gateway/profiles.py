"""Users, devices, tokens and profile reads: what the HTTP API and the admin CLI call.

Tokens are random 32-byte URL-safe strings shown once; only their SHA-256 is stored, so a
database dump does not hand out access. A user token reads and deletes that user's profile
only; an admin token (user NULL) may also register devices and read any profile.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Any

from sqlalchemy import Engine, select

from earmark.errors import EarmarkError
from earmark.gateway.merge import MergeConfig, decay, erase, fold_device
from earmark.gateway.store import contributions, devices, profiles, tokens
from earmark.wire import DEVICE_ID_RE

USER_ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")


class RegistryError(EarmarkError):
    """A device or user id that cannot be registered."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def issue_token(engine: Engine, user_id: str | None) -> str:
    """A new token for ``user_id`` (None: an admin token). Returned once, stored hashed."""
    if user_id is not None and not USER_ID_RE.match(user_id):
        raise RegistryError(f"user id {user_id!r} must match {USER_ID_RE.pattern}")
    token = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(
            tokens.insert().values(
                token_sha256=_hash(token), user_id=user_id, created_at=time.time()
            )
        )
    return token


def authenticate(engine: Engine, token: str) -> tuple[bool, str | None]:
    """(valid, user) for a bearer token; user None with valid True means admin."""
    with engine.connect() as conn:
        row = conn.execute(
            select(tokens.c.user_id).where(tokens.c.token_sha256 == _hash(token))
        ).first()
    return (False, None) if row is None else (True, row[0])


def register_device(
    engine: Engine, device_id: str, user_id: str, cfg: MergeConfig
) -> dict[str, Any]:
    """Give ``device_id`` to ``user_id``; what it already sent joins the user's profile."""
    if not DEVICE_ID_RE.match(device_id):
        raise RegistryError(f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}")
    if not USER_ID_RE.match(user_id):
        raise RegistryError(f"user id {user_id!r} must match {USER_ID_RE.pattern}")
    with engine.begin() as conn:
        owner = conn.execute(
            select(devices.c.user_id).where(devices.c.device_id == device_id)
        ).scalar()
        if owner == user_id:
            return {"device_id": device_id, "user_id": user_id, "created": False, "folded": 0}
        if owner is not None:
            raise RegistryError(f"device {device_id} already belongs to another user")
        conn.execute(
            devices.insert().values(device_id=device_id, user_id=user_id, registered_at=time.time())
        )
        folded = fold_device(conn, device_id, user_id, cfg)
    return {"device_id": device_id, "user_id": user_id, "created": True, "folded": folded}


def read_profile(
    engine: Engine, user_id: str, cfg: MergeConfig, limit: int = 10, now: float | None = None
) -> dict[str, Any]:
    now = time.time() if now is None else now
    with engine.connect() as conn:
        rows = conn.execute(select(profiles).where(profiles.c.user_id == user_id)).all()
        devs = (
            conn.execute(select(devices.c.device_id).where(devices.c.user_id == user_id))
            .scalars()
            .all()
        )
    scored = sorted(
        (
            {"tag": r.tag, "score": round(decay(r.score, r.ref_t, now, cfg.half_life_s), 6)}
            for r in rows
        ),
        key=lambda x: (-x["score"], x["tag"]),
    )
    return {
        "user_id": user_id,
        "as_of": int(now),
        "half_life_days": cfg.half_life_s / 86400,
        "devices": sorted(devs),
        "interests": scored[:limit],
    }


def explain(
    engine: Engine, user_id: str, cfg: MergeConfig, now: float | None = None
) -> dict[str, Any]:
    """Per tag: which windows from which devices contributed, and what each is worth now."""
    now = time.time() if now is None else now
    profile = read_profile(engine, user_id, cfg, limit=10**6, now=now)
    with engine.connect() as conn:
        rows = conn.execute(
            select(contributions)
            .where(contributions.c.device_id.in_(profile["devices"]))
            .order_by(contributions.c.window_start, contributions.c.device_id, contributions.c.seq)
        ).all()
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        end = r.window_start + r.window_s
        by_tag.setdefault(r.tag, []).append(
            {
                "device_id": r.device_id,
                "seq": r.seq,
                "window_start": r.window_start,
                "window_s": r.window_s,
                "w": r.w,
                "worth_now": round(decay(r.w, end, now, cfg.half_life_s), 6),
                "model": r.model,
            }
        )
    for interest in profile["interests"]:
        interest["contributions"] = by_tag.get(interest["tag"], [])
    profile["cap"] = cfg.cap
    return profile


def export(engine: Engine, user_id: str, cfg: MergeConfig) -> dict[str, Any]:
    """Everything the gateway holds about a user, as one JSON document."""
    data = explain(engine, user_id, cfg)
    data["format"] = "earmark-profile-export/1"
    return data


def delete_profile(engine: Engine, user_id: str) -> dict[str, int]:
    with engine.begin() as conn:
        return erase(conn, user_id)
