"""Consent on the device: nothing is queued or sent without an explicit, stored opt-in.

The state is one small JSON file in the state dir, written atomically (temp file, fsync,
rename, fsync of the directory), so a power cut leaves the old or the new state, never a torn
one. A file that is missing, unreadable or malformed reads as *no consent*.

Revoking, in this order: the file says "revoked" (the gate checks it on every utterance, and
the batcher before building a window, so signals stop at once, also in a device process
that did not make the change); everything queued in the outbox is discarded; a
:class:`earmark.wire.DeletionRequest` for the profile is queued for the gateway.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from earmark.errors import EarmarkError
from earmark.wire import DEVICE_ID_RE, DeletionRequest, Message

log = logging.getLogger(__name__)


class ConsentError(EarmarkError):
    """The consent state cannot be written or the request makes no sense."""


class DeletionSink(Protocol):
    """What revoking needs from the outbox (earmark.device.outbox.Outbox implements it)."""

    def put(self, message: Message) -> int: ...

    def discard_pending(self) -> int: ...


@dataclass(frozen=True)
class ConsentState:
    granted: bool
    changed_at: float | None  # epoch seconds of the last grant or revoke; local only
    device_id: str | None  # the pseudonymous id deletion requests are addressed with
    note: str = ""  # why the state reads as it does, e.g. "consent file malformed"


@dataclass(frozen=True)
class RevokeResult:
    discarded: int  # queued batches dropped
    deletion_seq: int | None  # seq of the queued deletion request, None if none was queued


class ConsentStore:
    FILENAME = "consent.json"

    def __init__(self, state_dir: Path | str) -> None:
        self.path = Path(state_dir) / self.FILENAME
        self._cache: tuple[int, ConsentState] | None = None

    def state(self) -> ConsentState:
        """The stored state; re-read only when the file changed (one stat per call)."""
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return ConsentState(False, None, None, "never granted")
        except OSError as err:
            return ConsentState(False, None, None, f"consent file unreadable: {err}")
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1]
        state = self._read()
        self._cache = (stamp, state)
        return state

    def granted(self) -> bool:
        return self.state().granted

    def _read(self) -> ConsentState:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            granted = data["granted"]
            if not isinstance(granted, bool):
                raise ValueError("granted must be true or false")
            device_id = data.get("device_id")
            changed = data.get("changed_at")
            return ConsentState(granted, None if changed is None else float(changed), device_id)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("consent file %s is malformed (%s): treated as no consent", self.path, err)
            return ConsentState(False, None, None, f"consent file malformed: {err}")

    def _write(self, state: ConsentState) -> None:
        body = {k: v for k, v in asdict(state).items() if k != "note"}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".consent.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(body, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as err:
            raise ConsentError(f"cannot write consent state {self.path}: {err}") from None
        self._cache = None

    def grant(self, now: float, device_id: str | None = None) -> ConsentState:
        if device_id is not None and not DEVICE_ID_RE.match(device_id):
            raise ConsentError(f"device id {device_id!r} must match {DEVICE_ID_RE.pattern}")
        state = ConsentState(True, now, device_id or self.state().device_id)
        self._write(state)
        log.info("consent granted")
        return state

    def bind_device(self, device_id: str) -> None:
        """Remember which id this device sends as, so a later revoke can address deletion."""
        state = self.state()
        if state.device_id != device_id and not state.note.startswith("consent file"):
            self._write(ConsentState(state.granted, state.changed_at, device_id))

    def revoke(
        self, now: float, outbox: DeletionSink | None, device_id: str | None = None
    ) -> RevokeResult:
        """Stop, discard, request deletion. Without an outbox only the state changes."""
        previous = self.state()
        device_id = device_id or previous.device_id
        self._write(ConsentState(False, now, device_id))  # first: signals stop here
        log.info("consent revoked")
        if outbox is None:
            return RevokeResult(0, None)
        discarded = outbox.discard_pending()
        seq = None
        if device_id is not None:
            window = int(now // 3600) * 3600  # no finer timestamp leaves the device
            seq = outbox.put(DeletionRequest(device_id, 0, requested_window=window))
        return RevokeResult(discarded, seq)
