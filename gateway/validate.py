"""Check one MQTT message before it may touch a profile; keep what fails as a dead letter.

Checks that need no database: size, topic shape, the wire schema (``earmark.wire.decode``,
which also refuses sensitive and unknown tags), the device id in the payload against the
device id in the topic (the broker ACL already ties the topic to the authenticated
username, so payload == topic == authenticated client), the message kind against the topic
kind, a blocked region, a window in the future. Checks that need the database (replay,
erased sequence numbers, flood) live in :mod:`earmark.gateway.merge`.

A dead letter keeps the reason, a short detail, the payload's length and SHA-256 and only
its first bytes, stored as opaque bytes: the payload is never trusted or parsed again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass

from sqlalchemy import Connection

from earmark.errors import WireError
from earmark.gateway.merge import Item
from earmark.gateway.store import HEAD_BYTES, dead_letters
from earmark.wire import (
    BLOCKED_REGIONS,
    MAX_PAYLOAD_BYTES,
    DeletionRequest,
    SignalBatch,
    TagCheck,
    decode,
    parse_topic,
)

FUTURE_SKEW_S = 3600  # a window may not end more than this after the gateway's clock


@dataclass(frozen=True)
class Rejection:
    topic: str
    payload: bytes
    reason: str  # short stable code: a metrics label and the dead-letter reason
    detail: str
    device_id: str | None = None


@dataclass(frozen=True)
class Checks:
    tag_check: TagCheck
    blocked_regions: Collection[str] = BLOCKED_REGIONS


def check(topic: str, payload: bytes, checks: Checks, now: float) -> Item | Rejection:
    """Return the validated item, or why it was refused."""
    try:
        device_id, kind = parse_topic(topic)
    except WireError as err:
        return Rejection(topic, payload, err.reason, err.detail)
    if len(payload) > MAX_PAYLOAD_BYTES:
        return Rejection(topic, payload, "oversized", f"{len(payload)} bytes", device_id)
    try:
        message = decode(payload, checks.tag_check)
    except WireError as err:
        return Rejection(topic, payload, err.reason, err.detail, device_id)
    if message.device_id != device_id:
        return Rejection(
            topic, payload, "forged_device_id", "payload device_id differs from topic", device_id
        )
    expected = SignalBatch if kind == "signals" else DeletionRequest if kind == "deletion" else None
    if expected is None or not isinstance(message, expected):
        return Rejection(topic, payload, "wrong_topic", f"{message.type} on {kind}", device_id)
    if isinstance(message, SignalBatch):
        if message.region in checks.blocked_regions:
            return Rejection(
                topic, payload, "region_blocked", f"region {message.region}", device_id
            )
        if message.window_start + message.window_s > now + FUTURE_SKEW_S:
            return Rejection(
                topic, payload, "future_window", "window ends in the future", device_id
            )
    return Item(message, hashlib.sha256(payload).hexdigest())


def store_dead_letter(conn: Connection, r: Rejection, now: float) -> None:
    conn.execute(dead_letters.insert().values(dead_letter_row(r, now)))


def dead_letter_row(r: Rejection, now: float) -> dict[str, object]:
    return {
        "received_at": now,
        "reason": r.reason[:64],
        "detail": r.detail[:300],
        "topic": r.topic[:200],
        "device_id": r.device_id,
        "payload_len": len(r.payload),
        "payload_sha256": hashlib.sha256(r.payload).hexdigest(),
        "payload_head": r.payload[:HEAD_BYTES],
    }


def rejection_for(item: Item, topic: str, payload: bytes, reason: str, detail: str) -> Rejection:
    return Rejection(topic, payload, reason, detail, item.message.device_id)
