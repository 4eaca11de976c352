"""The world around the glasses: a Mosquitto and a gateway, started here or reached.

Why here: ``earmark sim`` and ``earmark demo`` must run on a fresh machine with nothing set
up, so they start the local ``mosquitto`` binary on a free loopback port with a config of their
own (:class:`earmark.gateway.broker.LocalBroker`; earmark's embedded broker where Mosquitto is
not installed) and run the real gateway in this process on a SQLite file in a temp dir. The HIL
tests pass a broker started from the shipped deploy config instead, with per-device
credentials; both paths use the same :class:`Services` object.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from earmark.endpoint import BrokerConfig
from earmark.errors import EarmarkError
from earmark.gateway import profiles
from earmark.gateway.merge import MergeConfig
from earmark.gateway.service import Gateway, GatewayConfig
from earmark.gateway.store import floors, open_engine, seen
from earmark.gateway.validate import Checks
from earmark.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)

GATEWAY_USER = "earmark.gateway"  # the deploy ACL's gateway user


@dataclass
class Services:
    """A broker URL, credentials for devices, and the gateway consuming from that broker."""

    broker_url: str
    engine: Engine
    gateway: Gateway
    merge: MergeConfig
    taxonomy: Taxonomy
    passwords: dict[str, str] = field(default_factory=dict)  # device id → MQTT password
    _stop: list[Any] = field(default_factory=list)
    broker_kind: str = "given"  # or the LocalBroker started here: "mosquitto" | "embedded"

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        broker_url: str | None = None,
        gateway_password: str | None = None,
        passwords: dict[str, str] | None = None,
        db_url: str | None = None,
    ) -> Services:
        """Start what is missing: a local broker without ``broker_url``, always a gateway."""
        stop: list[Any] = []
        kind = "given"
        if broker_url is None:
            from earmark.gateway.broker import LocalBroker

            broker = LocalBroker()
            stop.append(broker.stop)
            broker_url, kind = broker.url, broker.kind
        engine = open_engine(db_url or f"sqlite:///{workdir / 'gateway.sqlite3'}")
        merge = MergeConfig()
        taxonomy = load_taxonomy()
        user = GATEWAY_USER if gateway_password else None
        cfg = GatewayConfig(
            BrokerConfig.from_url(broker_url, username=user, password=gateway_password),
            client_id="earmark-sim-gateway",
            batch_size=200,
            merge=merge,
        )
        gateway = Gateway(cfg, engine, Checks(tag_check=taxonomy.status)).start()
        stop.insert(0, gateway.stop)
        if not gateway.wait_subscribed(15):
            for f in stop:
                f()
            raise EarmarkError(f"the gateway could not subscribe at {broker_url}")
        return cls(broker_url, engine, gateway, merge, taxonomy, dict(passwords or {}), stop, kind)

    def register(self, device_id: str, user_id: str) -> None:
        profiles.register_device(self.engine, device_id, user_id, self.merge)

    def profile(self, user_id: str, now: float) -> dict[str, Any]:
        return profiles.read_profile(self.engine, user_id, self.merge, limit=20, now=now)

    def received(self, device_id: str) -> tuple[set[int], int]:
        """What the gateway holds for a device: merged seqs, and the erased-below floor."""
        with self.engine.connect() as conn:
            got = set(
                conn.execute(select(seen.c.seq).where(seen.c.device_id == device_id)).scalars()
            )
            floor = conn.execute(
                select(floors.c.seq).where(floors.c.device_id == device_id)
            ).scalar()
        return got, int(floor or 0)

    def contributions(self, device_id: str) -> dict[tuple[int, str], float]:
        from earmark.gateway.store import contributions as c

        with self.engine.connect() as conn:
            rows = conn.execute(select(c.c.seq, c.c.tag, c.c.w).where(c.c.device_id == device_id))
            return {(int(s), t): float(w) for s, t, w in rows}

    def stop(self) -> None:
        for f in self._stop:
            try:
                f()
            except Exception as err:  # noqa: BLE001 - clean up the rest regardless
                log.warning("cleanup step failed: %s", err)
        self._stop.clear()
        self.engine.dispose()
