"""The glasses' radio link as a real TCP proxy between the device's MQTT client and the broker.

Why a proxy and not a flag: the publisher's behaviour on a dead link (a half-sent PUBLISH, a
PUBACK that never arrives, a reconnect that resends) only happens on a real socket. The
simulator points the device at :class:`LinkProxy` and can then

* cut the link (every open connection is reset, new ones are refused until it comes back),
* add latency to every chunk in both directions,
* lose packets: TCP never delivers a stream with holes, so loss shows up as what it does to a
  TCP connection on a bad radio, a reset; each forwarded chunk resets its connection with
  probability ``loss`` (seeded, so runs repeat),
* capture every byte the device sent (``upstream``), which the privacy tests search for
  transcript text,
* and play a strict broker: with ``cut_publish_to`` set, a PUBLISH to a topic under that
  prefix is not forwarded and the connection is reset instead, as a broker that refuses a
  publish by closing the connection does (MQTT-3.3.5-2).
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time

log = logging.getLogger(__name__)


class LinkProxy:
    def __init__(
        self,
        target: tuple[str, int],
        *,
        latency_s: float = 0.0,
        loss: float = 0.0,
        seed: int = 0,
        capture: bool = True,
        name: str = "link",
        cut_publish_to: str | None = None,
    ) -> None:
        self.target = target
        self.latency_s = latency_s
        self.loss = loss
        self.name = name
        self.capture = capture
        self.cut_publish_to = cut_publish_to
        self.cuts = 0  # connections reset on a PUBLISH under cut_publish_to
        self.upstream = bytearray()  # every byte the device sent through this link
        self.downstream_bytes = 0
        self.resets = 0
        self._rng = random.Random(seed)
        self._up = True
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self._server = socket.socket()
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def up(self) -> bool:
        return self._up

    def set_up(self, up: bool) -> None:
        """Link up or down; going down resets every connection at once."""
        self._up = up
        if not up:
            self._reset_all()

    def close(self) -> None:
        self._closed = True
        self._reset_all()
        try:
            self._server.close()
        except OSError:
            pass

    # --- internals ------------------------------------------------------------------------

    def _reset_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for s in conns:
            _hard_close(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if not self._up:
                _hard_close(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError as err:
                log.debug("proxy %s: broker unreachable: %s", self.name, err)
                _hard_close(client)
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
            pair = (client, upstream)
            for src, dst, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up, pair), daemon=True).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket, up: bool, pair: tuple[socket.socket, ...]
    ) -> None:
        pending = bytearray()  # upstream bytes not yet parsed into whole MQTT packets
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.latency_s > 0:
                    time.sleep(self.latency_s)
                if not self._up or (self.loss > 0 and self._rng.random() < self.loss):
                    self.resets += 1
                    break
                if up and self.cut_publish_to is not None:
                    pending += data
                    cut = _forbidden_publish_at(pending, self.cut_publish_to.encode())
                    if cut is not None:
                        dst.sendall(data[: max(0, len(data) - (len(pending) - cut))])
                        self.cuts += 1
                        break
                    del pending[: _whole_packets_end(pending)]
                dst.sendall(data)
                if up:
                    if self.capture:
                        self.upstream += data
                else:
                    self.downstream_bytes += len(data)
        except OSError:
            pass
        for s in pair:
            _hard_close(s)
        with self._lock:
            self._conns = [s for s in self._conns if s not in pair]


def _packets(buf: bytes | bytearray) -> list[tuple[int, int, int]]:
    """(start, body start, end) of each whole MQTT packet at the front of ``buf``."""
    out, pos = [], 0
    while pos + 2 <= len(buf):
        length, shift, i = 0, 0, pos + 1
        while i < len(buf) and i < pos + 5:  # remaining length: 1 to 4 bytes, 7 bits each
            length |= (buf[i] & 0x7F) << shift
            shift += 7
            i += 1
            if not buf[i - 1] & 0x80:
                break
        else:
            break  # the length itself is incomplete
        if i + length > len(buf):
            break
        out.append((pos, i, i + length))
        pos = i + length
    return out


def _whole_packets_end(buf: bytearray) -> int:
    found = _packets(buf)
    return found[-1][2] if found else 0


def _forbidden_publish_at(buf: bytearray, prefix: bytes) -> int | None:
    """Offset in ``buf`` of the first whole PUBLISH whose topic starts with ``prefix``."""
    for start, body, _ in _packets(buf):
        if buf[start] >> 4 == 3:  # PUBLISH: topic = 2-byte length + UTF-8
            size = int.from_bytes(buf[body : body + 2], "big")
            if bytes(buf[body + 2 : body + 2 + size]).startswith(prefix):
                return start
    return None


def _hard_close(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a radio that vanished would leave the peer."""
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        s.shutdown(socket.SHUT_RDWR)  # wakes the pump thread blocked in recv()
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
