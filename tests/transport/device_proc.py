"""A device publisher in its own process, so tests can cut its power (SIGKILL) mid-publish.

    python -m tests.transport.device_proc STATE_DIR BROKER_URL DEVICE_ID PASSWORD PUT_N

Puts PUT_N batches into the outbox (if PUT_N > 0), starts the publisher and prints
``connected`` once online, then ``sent <seq>`` for each PUBACK the ledger records, flushed.
"""

from __future__ import annotations

import sys
import threading
import time

from earmark.device.outbox import Outbox
from earmark.device.publisher import Publisher
from earmark.endpoint import BrokerConfig
from earmark.wire import Message
from tests.transport.conftest import batch

_out = threading.Lock()


def say(line: str) -> None:
    with _out:  # whole lines only: the publisher thread and the main thread both write
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class PrintingLedger:
    def record_sent(self, message: Message) -> None:
        say(f"sent {message.seq}")

    def record_dropped(self, message: Message, reason: str) -> None:
        say(f"dropped {message.seq} {reason}")


def main() -> None:
    state, url, device_id, password, n = sys.argv[1:6]
    box = Outbox(state, ledger=PrintingLedger())
    for _ in range(int(n)):
        box.put(batch(device_id))
    pub = Publisher(
        box, device_id, BrokerConfig.from_url(url, username=device_id, password=password),
        max_inflight=8,
    ).start()  # fmt: skip
    while not pub.connected:
        time.sleep(0.01)
    say("connected")
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
