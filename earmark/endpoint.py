"""Where and how an MQTT client connects: one definition for device, gateway and benches.

A broker is named by URL (``mqtt://host:port``, ``mqtts://host:port``, optionally with
``user:pass@``); :meth:`BrokerConfig.new_client` builds a paho-mqtt 2.x MQTT v5 client with the
credentials and TLS already applied, so every client in earmark logs in the same way.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from earmark.errors import EarmarkError

SESSION_EXPIRY_S = 7 * 24 * 3600  # as long as the outbox TTL: a week offline keeps the session


class BrokerUrlError(EarmarkError):
    """A broker URL or TLS option that cannot be used."""


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect. Build it from a URL with :meth:`from_url`."""

    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca: str | None = None  # CA bundle for mqtts:// (system store when None)
    cert: str | None = None  # client certificate (mutual TLS)
    key: str | None = None
    keepalive: int = 30
    session_expiry_s: int = SESSION_EXPIRY_S

    @classmethod
    def from_url(cls, url: str, **options: object) -> BrokerConfig:
        """``mqtt://host:port`` or ``mqtts://host:port``; user:pass@ in the URL also works."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerUrlError(
                f"broker URL {url!r} must look like mqtt://HOST:PORT or mqtts://HOST:PORT"
            )
        try:
            port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        except ValueError:
            raise BrokerUrlError(f"broker URL {url!r} has an invalid port") from None
        opts = {k: v for k, v in options.items() if v is not None}
        if parts.username and "username" not in opts:
            opts["username"] = unquote(parts.username)
        if parts.password and "password" not in opts:
            opts["password"] = unquote(parts.password)
        tls = parts.scheme == "mqtts"
        if not tls and any(opts.get(k) for k in ("ca", "cert", "key")):
            raise BrokerUrlError(f"--ca/--cert/--key need an mqtts:// broker URL, not {url!r}")
        return cls(host=parts.hostname, port=port, tls=tls, **opts)  # type: ignore[arg-type]

    def new_client(self, client_id: str, **client_options: object) -> mqtt.Client:
        """A paho MQTT v5 client for this broker, credentials and TLS applied."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            **client_options,  # type: ignore[arg-type]
        )
        if self.username is not None:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            try:
                client.tls_set(
                    ca_certs=self.ca,
                    certfile=self.cert,
                    keyfile=self.key,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError) as err:
                raise BrokerUrlError(f"cannot use the TLS files: {err}") from None
        return client
