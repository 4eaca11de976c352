"""A small MQTT v5 broker on asyncio, for machines without Mosquitto (``earmark demo``).

``python -m earmark.gateway.embedded_broker --port 1883 [--host 127.0.0.1]`` serves until
SIGTERM/SIGINT; it prints nothing unless it cannot start. It implements what earmark's own
clients use (device publisher, gateway, benches, tests), no more:

* CONNECT with properties (session expiry, receive maximum, maximum packet size), will
  messages with will properties and will delay; username/password are accepted and ignored,
  anonymous clients too: **there is no authentication and no ACL**;
* persistent sessions (``clean_start=False``): subscriptions survive disconnects and QoS 1
  messages are queued while offline until the session expires; CONNACK says session_present;
  a second connection with the same client id takes the session over (the old one gets
  DISCONNECT 0x8E and its will is discarded, as Mosquitto does);
* PUBLISH QoS 0 and 1 both ways; an inbound QoS 1 is acknowledged after it was routed, with
  0x10 (no matching subscribers) when nobody gets it, as Mosquitto does; outbound QoS 1 not
  yet acknowledged is resent with DUP on the session's next connection, in order; the
  client's receive maximum bounds what is in flight;
* SUBSCRIBE/UNSUBSCRIBE with ``+``/``#``, ``$share/<group>/<filter>`` (each message to one
  connected member of the group, round robin), retained messages (an empty retained payload
  clears one), message expiry, no-local, retain-as-published and retain handling;
* PINGREQ, DISCONNECT (any reason but 0x00 sends the will), keepalive timeout at 1.5×.

Refused: QoS 2 (CONNACK advertises Maximum QoS 1), topic aliases (none advertised, so a client
sending one is disconnected with 0x94), subscription identifiers, enhanced authentication,
MQTT 3.1/3.1.1. A malformed packet closes that connection only (DISCONNECT 0x81 once it is
connected). Nothing is written to disk and there is no TLS: it is for demos and tests on
loopback, not for production (deploy/ runs Mosquitto with credentials, ACL and TLS).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
MAX_PACKET = 16 * 1024 * 1024  # larger packets are refused (0x95); advertised in CONNACK
CONNECT_TIMEOUT_S = 10.0  # a socket that sends no CONNECT within this is closed
NEVER = 0xFFFFFFFF  # session expiry interval: the session never expires

# --- packet encoding and decoding -----------------------------------------------------------

# property id -> wire type: B byte, H two-byte int, L four-byte int, V varint, S string,
# D binary data, P string pair (user property)
PROPERTY_TYPES = {
    0x01: "B", 0x02: "L", 0x03: "S", 0x08: "S", 0x09: "D", 0x0B: "V", 0x11: "L", 0x12: "S",
    0x13: "H", 0x15: "S", 0x16: "D", 0x17: "B", 0x18: "L", 0x19: "B", 0x1A: "S", 0x1C: "S",
    0x1F: "S", 0x21: "H", 0x22: "H", 0x23: "H", 0x24: "B", 0x25: "B", 0x26: "P", 0x27: "L",
    0x28: "B", 0x29: "B", 0x2A: "B",
}  # fmt: skip
MESSAGE_EXPIRY, SUBSCRIPTION_ID, SESSION_EXPIRY, ASSIGNED_ID = 0x02, 0x0B, 0x11, 0x12
AUTH_METHOD, WILL_DELAY, RECEIVE_MAXIMUM, TOPIC_ALIAS = 0x15, 0x18, 0x21, 0x23
MAXIMUM_QOS, MAXIMUM_PACKET_SIZE, SUB_IDS_AVAILABLE = 0x24, 0x27, 0x29

Props = list[tuple[int, Any]]


class ProtocolError(Exception):
    """Close the connection, telling the client ``reason`` (0x81 malformed, 0x82 protocol...)."""

    def __init__(self, reason: int, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def malformed(why: str) -> ProtocolError:
    return ProtocolError(0x81, why)


class Reader:
    """Reads the fields of one packet body; any overrun is a malformed packet."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise malformed("packet shorter than its fields")
        self.pos += n
        return self.data[self.pos - n : self.pos]

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def varint(self) -> int:
        value = 0
        for i in range(4):
            b = self.byte()
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                return value
        raise malformed("variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def string(self) -> str:
        try:
            s = self.binary().decode()
        except UnicodeDecodeError:
            raise malformed("string is not UTF-8") from None
        if "\x00" in s:
            raise malformed("string contains U+0000")
        return s

    def rest(self) -> bytes:
        return self.take(len(self.data) - self.pos)

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def props(self) -> Props:
        end = self.varint() + self.pos
        read = {"B": self.byte, "H": self.u16, "L": self.u32, "V": self.varint,
                "S": self.string, "D": self.binary}  # fmt: skip
        out: Props = []
        while self.pos < end:
            pid = self.varint()
            kind = PROPERTY_TYPES.get(pid)
            if kind is None:
                raise malformed(f"unknown property 0x{pid:02x}")
            out.append((pid, (self.string(), self.string()) if kind == "P" else read[kind]()))
        if self.pos != end:
            raise malformed("properties overrun their length")
        return out


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def string(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u16(len(b)) + b


def encode_props(props: Props) -> bytes:
    if not props:
        return b"\x00"
    out = bytearray()
    for pid, value in props:
        kind = PROPERTY_TYPES[pid]
        out += varint(pid)
        if kind == "B":
            out.append(value)
        elif kind == "H":
            out += u16(value)
        elif kind == "L":
            out += value.to_bytes(4, "big")
        elif kind == "V":
            out += varint(value)
        elif kind == "P":
            out += string(value[0]) + string(value[1])
        else:
            out += string(value)
    return varint(len(out)) + bytes(out)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


def packet_span(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """Where the body of the packet starting at ``pos`` starts and ends; None if incomplete."""
    length, shift, i = 0, 0, pos + 1
    while i < len(buf):
        b = buf[i]
        i += 1
        length |= (b & 0x7F) << shift
        if not b & 0x80:
            if length > MAX_PACKET:
                raise ProtocolError(0x95, f"packet of {length} bytes")
            return (i, i + length) if i + length <= len(buf) else None
        shift += 7
        if shift == 28:
            raise malformed("remaining length longer than 4 bytes")
    return None


def prop(props: Props, pid: int, default: Any = None) -> Any:
    return next((v for p, v in props if p == pid), default)


# --- topics ---------------------------------------------------------------------------------


def valid_filter(f: str) -> bool:
    levels = f.split("/")
    return bool(f) and all(
        ("#" not in lv or (lv == "#" and i == len(levels) - 1)) and ("+" not in lv or lv == "+")
        for i, lv in enumerate(levels)
    )


def matches(levels: list[str], topic: list[str]) -> bool:
    """Does a split filter match a split topic name? ``$…`` topics need a literal first level."""
    if topic[0].startswith("$") and levels[0] in ("+", "#"):
        return False
    for i, lv in enumerate(levels):
        if lv == "#":
            return True
        if i >= len(topic) or (lv != "+" and lv != topic[i]):
            return False
    return len(levels) == len(topic)


# --- broker state ---------------------------------------------------------------------------


@dataclass
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    props: Props  # forwarded as they came, minus expiry (recomputed) and topic alias
    expires_at: float | None = None  # loop time
    sender: str = ""  # client id, for no-local


@dataclass
class Subscription:
    levels: list[str]  # the filter (without the $share/<group>/ prefix), split on /
    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    group: str | None = None  # shared subscription group


@dataclass
class Delivery:
    msg: Message
    qos: int
    retain: bool


@dataclass
class Session:
    client_id: str
    expiry: int = 0  # seconds the session outlives its connection
    subs: dict[str, Subscription] = field(default_factory=dict)  # by filter as subscribed
    inflight: dict[int, Delivery] = field(default_factory=dict)  # QoS 1 sent, not yet acked
    queue: deque[Delivery] = field(default_factory=deque)  # waiting to be sent
    conn: Connection | None = None
    last_pid: int = 0
    timer: asyncio.TimerHandle | None = None  # session expiry or delayed will

    def next_pid(self) -> int:
        for _ in range(65535):
            self.last_pid = self.last_pid % 65535 + 1
            if self.last_pid not in self.inflight:
                return self.last_pid
        raise ProtocolError(0x93, "no free packet identifier")  # cannot happen: receive max

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Broker:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.retained: dict[str, Message] = {}
        self.rr: dict[str, int] = {}  # $share/<group>/<filter> -> round-robin counter
        self.loop = asyncio.get_running_loop()

    def route(self, msg: Message) -> int:
        """Give ``msg`` to every matching session (one member per share group); how many."""
        topic = msg.topic.split("/")
        groups: dict[str, list[tuple[Session, Subscription]]] = {}
        n = 0
        for s in self.sessions.values():
            best: Subscription | None = None
            for key, sub in s.subs.items():
                if not matches(sub.levels, topic):
                    continue
                if sub.group is not None:
                    groups.setdefault(key, []).append((s, sub))
                elif not (sub.no_local and msg.sender == s.client_id):
                    if best is None or sub.qos > best.qos:
                        best = sub
            if best is not None:
                n += self.deliver(s, msg, best.qos, msg.retain and best.retain_as_published)
        for key, members in groups.items():
            online = [m for m in members if m[0].conn is not None] or members
            i = self.rr.get(key, 0)
            self.rr[key] = i + 1
            s, sub = online[i % len(online)]
            n += self.deliver(s, msg, sub.qos, False)
        return n

    def deliver(self, s: Session, msg: Message, qos: int, retain: bool) -> int:
        qos = min(qos, msg.qos)
        if s.conn is None and qos == 0:
            return 1  # a subscriber matched; QoS 0 is not queued for it while offline
        s.queue.append(Delivery(msg, qos, retain))
        self.pump(s)
        return 1

    def pump(self, s: Session) -> None:
        """Send what the session's queue holds, while the client's receive maximum allows."""
        conn = s.conn
        if conn is None:
            return
        now = self.loop.time()
        while s.queue:
            d = s.queue[0]
            if d.qos and len(s.inflight) >= conn.receive_max:
                return
            s.queue.popleft()
            if d.msg.expires_at is not None and d.msg.expires_at <= now:
                continue
            pid = s.next_pid() if d.qos else 0
            if conn.send_publish(d, pid, dup=False) and d.qos:
                s.inflight[pid] = d

    def publish(self, msg: Message) -> int:
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)
        return self.route(msg)

    def disconnected(self, s: Session, will: Message | None, will_delay: int) -> None:
        """The session lost its connection: publish the will (maybe later), expire it later."""
        s.conn = None
        if will is not None and (will_delay == 0 or s.expiry == 0):
            self.publish(will)
            will = None
        if s.expiry == 0:
            self.end_session(s)
        elif will is not None and will_delay < s.expiry:

            def late_will() -> None:  # the client did not come back within the will delay
                self.publish(will)
                if s.expiry != NEVER:
                    s.timer = self.loop.call_later(s.expiry - will_delay, self.end_session, s)

            s.timer = self.loop.call_later(will_delay, late_will)
        elif s.expiry != NEVER:
            s.timer = self.loop.call_later(s.expiry, self.end_session, s, will)

    def end_session(self, s: Session, will: Message | None = None) -> None:
        if self.sessions.get(s.client_id) is s:
            del self.sessions[s.client_id]
        s.cancel_timer()
        if will is not None:  # the session ended before the will delay did
            self.publish(will)

    def retained_for(self, levels: list[str]) -> list[Message]:
        now = self.loop.time()
        for topic, m in list(self.retained.items()):
            if m.expires_at is not None and m.expires_at <= now:
                del self.retained[topic]
        return [m for t, m in self.retained.items() if matches(levels, t.split("/"))]


# --- one client connection ------------------------------------------------------------------


class Connection(asyncio.Protocol):
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = broker.loop
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.will: Message | None = None
        self.will_delay = 0
        self.receive_max = 65535
        self.max_packet = MAX_PACKET
        self.keepalive = 0
        self.last_rx = self.loop.time()
        self.timer: asyncio.TimerHandle | None = None
        self.closing = False

    # --- transport ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.timer = self.loop.call_later(CONNECT_TIMEOUT_S, self.check_alive)

    def send(self, data: bytes) -> None:
        if not self.out:  # write once per loop pass: many packets, one syscall
            self.loop.call_soon(self.flush)
        self.out.append(data)

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def close(self, reason: int | None = None) -> None:
        """Close; DISCONNECT ``reason`` first if this connection has a session."""
        if self.closing or self.transport is None:
            return
        self.closing = True
        if reason is not None and self.session is not None:
            self.send(bytes([DISCONNECT << 4, 1, reason]))
        self.flush()
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        s, self.session = self.session, None
        if s is not None and s.conn is self:
            self.broker.disconnected(s, self.will, self.will_delay)

    def check_alive(self) -> None:
        if self.session is None:
            log.info("no CONNECT within %.0f s: closing", CONNECT_TIMEOUT_S)
            self.close()
            return
        due = self.last_rx + 1.5 * self.keepalive
        if self.loop.time() >= due:
            log.info("%s: keepalive timeout", self.session.client_id)
            self.close(0x8D)
        else:
            self.timer = self.loop.call_at(due, self.check_alive)

    def data_received(self, data: bytes) -> None:
        self.last_rx = self.loop.time()
        buf = self.buf
        buf += data
        pos = 0
        try:
            while not self.closing and (span := packet_span(buf, pos)) is not None:
                first, body = buf[pos], bytes(buf[span[0] : span[1]])
                pos = span[1]
                self.handle(first, body)
        except ProtocolError as err:
            who = self.session.client_id if self.session else self.peer()
            log.info("%s: %s (reason 0x%02x): closing", who, err, err.reason)
            self.close(err.reason)
        except Exception:  # a bug here must not take the other clients down
            log.exception("%s: error handling a packet", self.peer())
            self.close(0x83)
        del buf[:pos]

    def peer(self) -> str:
        info = self.transport.get_extra_info("peername") if self.transport else None
        return f"{info[0]}:{info[1]}" if info else "?"

    # --- packets ------------------------------------------------------------------------

    def handle(self, first: int, body: bytes) -> None:
        kind, flags = first >> 4, first & 0x0F
        if self.session is None:
            if kind != CONNECT:
                raise ProtocolError(0x82, f"packet type {kind} before CONNECT")
            self.on_connect(Reader(body))
            return
        expected_flags = 2 if kind in (SUBSCRIBE, UNSUBSCRIBE) else 0
        if kind != PUBLISH and flags != expected_flags:
            raise malformed(f"bad flags 0x{flags:x} on packet type {kind}")
        r = Reader(body)
        if kind == PUBLISH:
            self.on_publish(flags, r)
        elif kind == PUBACK:
            self.on_puback(r.u16())
        elif kind == SUBSCRIBE:
            self.on_subscribe(r)
        elif kind == UNSUBSCRIBE:
            self.on_unsubscribe(r)
        elif kind == PINGREQ:
            self.send(bytes([PINGRESP << 4, 0]))
        elif kind == DISCONNECT:
            self.on_disconnect(r)
        elif kind in (5, 6, 7):
            raise ProtocolError(0x82, "QoS 2 flow, but the broker grants QoS 1 at most")
        else:
            raise ProtocolError(0x82, f"unexpected packet type {kind}")

    def on_connect(self, r: Reader) -> None:
        if r.string() != "MQTT":
            raise malformed("not an MQTT CONNECT")
        level = r.byte()
        if level != 5:
            if level in (3, 4):  # a 3.1.1 CONNACK: "unacceptable protocol version"
                self.send(bytes([CONNACK << 4, 2, 0, 1]))
            raise ProtocolError(0x84, f"MQTT protocol level {level}: only MQTT 5 is served")
        flags = r.byte()
        will_qos = (flags >> 3) & 3
        if flags & 1 or will_qos == 3 or (not flags & 4 and flags & 0x38):
            raise malformed("bad CONNECT flags")
        self.keepalive = r.u16()
        props = r.props()
        client_id = r.string()
        will_props: Props = []
        if flags & 4:
            will_props = r.props()
            topic, payload = r.string(), r.binary()
            if not topic or "+" in topic or "#" in topic:
                raise malformed(f"will topic {topic!r}")
            self.will = self.message(topic, payload, will_qos, bool(flags & 0x20), will_props)
            self.will.sender = client_id
            self.will_delay = prop(will_props, WILL_DELAY, 0)
        if flags & 0x80:
            r.string()  # user name: accepted, never checked
        if flags & 0x40:
            r.binary()  # password: likewise
        reason = 0
        if prop(props, AUTH_METHOD) is not None:
            reason = 0x8C  # enhanced authentication is not supported
        elif will_qos == 2:
            reason = 0x9B
        elif prop(props, RECEIVE_MAXIMUM) == 0:
            raise ProtocolError(0x82, "receive maximum 0")
        if reason:
            self.send(packet(CONNACK << 4, bytes([0, reason, 0])))
            raise ProtocolError(reason, "CONNECT refused")
        self.receive_max = prop(props, RECEIVE_MAXIMUM, 65535)
        self.max_packet = prop(props, MAXIMUM_PACKET_SIZE, MAX_PACKET)
        ack_props: Props = [(MAXIMUM_QOS, 1), (MAXIMUM_PACKET_SIZE, MAX_PACKET),
                            (SUB_IDS_AVAILABLE, 0)]  # fmt: skip
        if not client_id:
            client_id = f"auto-{uuid.uuid4()}"
            ack_props.append((ASSIGNED_ID, client_id))
        self.attach(client_id, bool(flags & 2), prop(props, SESSION_EXPIRY, 0), ack_props)

    def attach(self, client_id: str, clean: bool, expiry: int, ack_props: Props) -> None:
        """Take over, resume or create the session; CONNACK; resend what was unacked."""
        broker = self.broker
        s = broker.sessions.get(client_id)
        if s is not None and s.conn is not None:  # session taken over: no will for the old one
            old = s.conn
            old.will = None
            old.close(0x8E)
            old.session = None
            s.conn = None
        if s is not None and clean:
            broker.end_session(s)
            s = None
        present = s is not None
        if s is None:
            s = broker.sessions[client_id] = Session(client_id)
        s.cancel_timer()  # expiry or a delayed will: the client is back in time
        s.conn, s.expiry, self.session = self, expiry, s
        if self.timer is not None:  # the CONNECT timeout
            self.timer.cancel()
        if self.keepalive:
            self.check_alive()
        self.send(packet(CONNACK << 4, bytes([int(present), 0]) + encode_props(ack_props)))
        for pid, d in s.inflight.items():
            self.send_publish(d, pid, dup=True)
        broker.pump(s)

    def message(self, topic: str, payload: bytes, qos: int, retain: bool, props: Props) -> Message:
        expiry = prop(props, MESSAGE_EXPIRY)
        kept = [p for p in props if p[0] not in (MESSAGE_EXPIRY, TOPIC_ALIAS, WILL_DELAY)]
        expires_at = None if expiry is None else self.loop.time() + expiry
        sender = self.session.client_id if self.session else ""
        return Message(topic, payload, qos, retain, kept, expires_at, sender)

    def on_publish(self, flags: int, r: Reader) -> None:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise malformed("PUBLISH with QoS 3")
        if qos == 2:
            raise ProtocolError(0x9B, "QoS 2 PUBLISH, but the broker grants QoS 1 at most")
        topic = r.string()
        pid = r.u16() if qos else 0
        props = r.props()
        if prop(props, TOPIC_ALIAS) is not None:
            raise ProtocolError(0x94, "topic alias, but the broker allows none")
        if not topic or "+" in topic or "#" in topic:
            raise ProtocolError(0x90, f"topic name {topic!r}")
        if qos and pid == 0:
            raise malformed("QoS 1 PUBLISH with packet identifier 0")
        n = self.broker.publish(self.message(topic, r.rest(), qos, bool(flags & 1), props))
        if qos:  # acknowledged after routing: the message is with its subscribers' sessions
            self.send(packet(PUBACK << 4, u16(pid) + (b"" if n else b"\x10")))

    def send_publish(self, d: Delivery, pid: int, dup: bool) -> bool:
        m = d.msg
        props = m.props
        if m.expires_at is not None:
            left = max(1, math.ceil(m.expires_at - self.loop.time()))
            props = [*props, (MESSAGE_EXPIRY, left)]
        body = string(m.topic) + (u16(pid) if d.qos else b"") + encode_props(props) + m.payload
        data = packet(PUBLISH << 4 | dup << 3 | d.qos << 1 | d.retain, body)
        if len(data) > self.max_packet:  # the client cannot take it: dropped, as the spec says
            return False
        self.send(data)
        return True

    def on_puback(self, pid: int) -> None:
        s = self.session
        assert s is not None
        if s.inflight.pop(pid, None) is not None:
            self.broker.pump(s)

    def on_subscribe(self, r: Reader) -> None:
        s = self.session
        assert s is not None
        pid = r.u16()
        if prop(r.props(), SUBSCRIPTION_ID) is not None:
            raise ProtocolError(0xA1, "subscription identifiers are not supported")
        codes, retained = [], []
        while not r.done():
            text, opts = r.string(), r.byte()
            qos, rh = opts & 3, (opts >> 4) & 3
            if qos == 3 or rh == 3 or opts & 0xC0:
                raise malformed(f"subscription options 0x{opts:02x}")
            group, filt = None, text
            if text.startswith("$share/"):
                _, group, filt = (text.split("/", 2) + [""])[:3]
                if not group or "+" in group or "#" in group or opts & 4:
                    codes.append(0x8F)
                    continue
            if not valid_filter(filt):
                codes.append(0x8F)
                continue
            levels = filt.split("/")
            new = text not in s.subs
            s.subs[text] = Subscription(levels, min(qos, 1), bool(opts & 4), bool(opts & 8), group)
            codes.append(min(qos, 1))
            if group is None and (rh == 0 or (rh == 1 and new)):
                retained += [(m, min(qos, 1)) for m in self.broker.retained_for(levels)]
        if not codes:
            raise ProtocolError(0x82, "SUBSCRIBE without a topic filter")
        self.send(packet(SUBACK << 4, u16(pid) + b"\x00" + bytes(codes)))
        for m, qos in retained:
            self.broker.deliver(s, m, qos, True)

    def on_unsubscribe(self, r: Reader) -> None:
        s = self.session
        assert s is not None
        pid = r.u16()
        r.props()
        codes = []
        while not r.done():
            codes.append(0 if s.subs.pop(r.string(), None) else 0x11)
        if not codes:
            raise ProtocolError(0x82, "UNSUBSCRIBE without a topic filter")
        self.send(packet(UNSUBACK << 4, u16(pid) + b"\x00" + bytes(codes)))

    def on_disconnect(self, r: Reader) -> None:
        reason = 0 if r.done() else r.byte()
        if not r.done():
            expiry = prop(r.props(), SESSION_EXPIRY)
            if expiry is not None and self.session is not None:
                if self.session.expiry == 0 and expiry:
                    raise ProtocolError(0x82, "session expiry set on DISCONNECT after 0")
                self.session.expiry = expiry
        if reason == 0:
            self.will = None  # a normal disconnection: no will
        self.closing = True
        assert self.transport is not None
        self.flush()
        self.transport.close()


# --- running it -----------------------------------------------------------------------------


async def serve(host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until cancelled)."""
    broker = Broker()
    server = await broker.loop.create_server(lambda: Connection(broker), host, port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        broker.loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready.set()
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m earmark.gateway.embedded_broker",
        description="a small MQTT v5 broker for demos and tests (no auth, no TLS, no disk)",
    )
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to stderr")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(serve(args.host, args.port))
    except OSError as err:
        print(
            f"embedded broker: cannot listen on {args.host}:{args.port}: {err.strerror or err}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
