"""The outbox: durable, ordered, bounded, and honest about what it drops."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from earmark.device.outbox import Outbox, OutboxError
from earmark.wire import DeletionRequest, SignalBatch, decode
from tests.transport.conftest import ManualClock, RecordingLedger, batch

REPO = Path(__file__).resolve().parents[2]


def test_sequence_numbers_are_assigned_in_order_and_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    seqs = [box.put(batch()) for _ in range(5)]
    seqs.append(box.put(DeletionRequest("dev-0001", 0, requested_window=3600 * 10)))
    assert seqs == [1, 2, 3, 4, 5, 6]
    assert box.ack(2) is not None
    box.close()

    again = Outbox(tmp_path)
    assert [e.seq for e in again.pending()] == [1, 3, 4, 5, 6]
    assert again.put(batch()) == 7  # never reused, even after acks
    # the stored payload is exactly the wire message with the assigned seq
    entry = again.pending()[0]
    message = decode(entry.payload, tag_check=lambda _t: "targetable")
    assert isinstance(message, SignalBatch) and message.seq == 1
    assert entry.topic == "earmark/v1/dev-0001/signals"
    assert [e.kind for e in again.pending()][-2:] == ["deletion", "signals"]


def test_ack_is_idempotent_and_pending_pages_after_a_cursor(tmp_path: Path) -> None:
    box = Outbox(tmp_path)
    for _ in range(10):
        box.put(batch())
    assert [e.seq for e in box.pending(after=3, limit=4)] == [4, 5, 6, 7]
    assert [m.seq for m in box.ack_many([4, 5, 99])] == [4, 5]
    assert box.ack(4) is None  # a second PUBACK for the same message changes nothing
    assert box.count() == 8


def test_full_outbox_drops_the_oldest_batches_and_counts_them(tmp_path: Path) -> None:
    ledger = RecordingLedger()
    box = Outbox(tmp_path, ledger=ledger, max_messages=3)
    box.put(DeletionRequest("dev-0001", 0, requested_window=0))  # seq 1, never dropped
    for _ in range(5):
        box.put(batch())  # seqs 2..6
    assert [e.seq for e in box.pending()] == [1, 4, 5, 6]
    assert ledger.dropped == [(2, "outbox_full"), (3, "outbox_full")]


def test_byte_limit_from_storage_is_enforced(tmp_path: Path) -> None:
    ledger = RecordingLedger()
    one = len(dataclasses.replace(batch(), seq=99).to_bytes()) + 64  # two-digit seqs
    box = Outbox(tmp_path, ledger=ledger, max_bytes=one * 4)
    for _ in range(10):
        box.put(batch())
    assert box.count() == 4
    assert [e.seq for e in box.pending()] == [7, 8, 9, 10]
    assert [s for s, _ in ledger.dropped] == [1, 2, 3, 4, 5, 6]


def test_expired_batches_are_dropped_and_counted_but_deletions_never_expire(
    tmp_path: Path,
) -> None:
    clock, ledger = ManualClock(), RecordingLedger()
    box = Outbox(tmp_path, clock=clock, ledger=ledger, ttl_s=3600)
    box.put(batch())
    box.put(DeletionRequest("dev-0001", 0, requested_window=0))
    clock.sleep(1800)
    box.put(batch())
    clock.sleep(1801)
    assert [e.seq for e in box.pending()] == [2, 3]
    assert ledger.dropped == [(1, "expired")]
    clock.sleep(10 * 24 * 3600)
    assert [e.kind for e in box.pending()] == ["deletion"]


def test_discard_pending_keeps_deletion_requests(tmp_path: Path) -> None:
    ledger = RecordingLedger()
    box = Outbox(tmp_path, ledger=ledger)
    for _ in range(3):
        box.put(batch())
    assert box.discard_pending() == 3
    box.put(DeletionRequest("dev-0001", 0, requested_window=0))
    assert [(e.seq, e.kind) for e in box.pending()] == [(4, "deletion")]
    assert ledger.dropped == [
        (1, "consent_revoked"),
        (2, "consent_revoked"),
        (3, "consent_revoked"),
    ]


def test_a_file_that_is_not_an_outbox_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "outbox.sqlite3"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="cannot open outbox"):
        Outbox(tmp_path)


WRITER = """
import sys
from earmark.device.outbox import Outbox
from tests.transport.conftest import batch
box = Outbox(sys.argv[1])
while True:
    seq = box.put(batch())
    print(seq, flush=True)
"""


@pytest.mark.parametrize("kill_after", [1, 57, 400])
def test_power_loss_mid_write_loses_nothing_committed_and_doubles_nothing(
    tmp_path: Path, kill_after: int
) -> None:
    """SIGKILL a writer at an arbitrary point: every seq it reported is there, in order."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    reported = [int(proc.stdout.readline()) for _ in range(kill_after)]
    proc.kill()
    proc.wait()
    db = sqlite3.connect(tmp_path / "outbox.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    box = Outbox(tmp_path)
    stored = [e.seq for e in box.pending()]
    assert stored[: len(reported)] == reported  # nothing reported as written is lost
    assert stored == list(range(1, len(stored) + 1))  # contiguous: no gap, no double
    assert box.next_seq() == len(stored) + 1  # a reboot continues, never reuses
