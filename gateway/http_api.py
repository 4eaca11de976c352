"""The HTTP API on the standard library's ThreadingHTTPServer.

Routes (all JSON except /metrics)::

    GET    /healthz                          no auth: DB reachable, broker connected
    GET    /metrics                          no auth: Prometheus text (counts only, no ids)
    GET    /v1/profiles/<user>[?limit=N]     top interests, decayed to now
    GET    /v1/profiles/<user>/explain       which windows and devices contributed
    GET    /v1/profiles/<user>/export        everything held about the user
    DELETE /v1/profiles/<user>               erase profile, contributions and dedup state
    PUT    /v1/devices/<device_id>           admin: {"user_id": ...} registers a device
    POST   /v1/users/<user>/tokens           admin: issue a token for that user

Every profile route needs ``Authorization: Bearer <token>``: the user's own token or an admin
token. A wrong user gets 403, a missing or unknown token 401.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from sqlalchemy import Engine, text

from earmark.errors import EarmarkError
from earmark.gateway import profiles as p
from earmark.gateway.merge import MergeConfig
from earmark.gateway.metrics import Metrics

log = logging.getLogger(__name__)
MAX_BODY = 4096


class ApiServer:
    def __init__(
        self,
        host: str,
        port: int,
        engine: Engine,
        cfg: MergeConfig,
        metrics: Metrics,
        broker_up: threading.Event | None = None,
    ) -> None:
        self.engine, self.cfg, self.metrics, self.broker_up = engine, cfg, metrics, broker_up
        api = self

        class Handler(_Handler):
            server_api = api

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ApiServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="earmark-http", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    server_api: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)

    def _send(
        self,
        status: int,
        body: Any,
        ctype: str = "application/json",
        extra: dict[str, str] | None = None,
    ) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body, indent=1).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def _auth(self, user: str | None) -> bool:
        """True when the bearer token may act on ``user`` (None: admin only)."""
        header = self.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            self._send(401, {"error": "missing bearer token"}, extra={"WWW-Authenticate": "Bearer"})
            return False
        valid, owner = p.authenticate(self.server_api.engine, header[7:].strip())
        if not valid:
            self._error(401, "unknown token")
            return False
        if owner is not None and owner != user:
            self._error(403, "this token may not act on that resource")
            return False
        return True

    def _route(self) -> tuple[list[str], dict[str, list[str]]]:
        parts = urlsplit(self.path)
        return [unquote(x) for x in parts.path.strip("/").split("/") if x], parse_qs(parts.query)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        if n > MAX_BODY:
            raise EarmarkError("request body too large")
        try:
            obj = json.loads(self.rfile.read(n) or b"{}")
        except json.JSONDecodeError as err:
            raise EarmarkError(f"body is not JSON: {err}") from None
        if not isinstance(obj, dict):
            raise EarmarkError("body must be a JSON object")
        return obj

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._dispatch("GET")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        try:
            self._handle(method)
        except EarmarkError as err:
            self._error(400, str(err))
        except Exception:  # the service keeps running; the client gets a 500
            log.exception("HTTP handler failed")
            self._error(500, "internal error")

    def _handle(self, method: str) -> None:
        api = self.server_api
        path, query = self._route()
        if method == "GET" and path == ["healthz"]:
            return self._health()
        if method == "GET" and path == ["metrics"]:
            return self._send(200, api.metrics.render(), "text/plain; version=0.0.4")
        if len(path) >= 3 and path[:2] == ["v1", "profiles"]:
            user, rest = path[2], path[3:]
            if not self._auth(user):
                return None
            if method == "GET" and not rest:
                limit = int(query.get("limit", ["10"])[0])
                return self._send(
                    200, p.read_profile(api.engine, user, api.cfg, limit=max(1, limit))
                )
            if method == "GET" and rest == ["explain"]:
                return self._send(200, p.explain(api.engine, user, api.cfg))
            if method == "GET" and rest == ["export"]:
                disp = {"Content-Disposition": f'attachment; filename="profile-{user}.json"'}
                return self._send(200, p.export(api.engine, user, api.cfg), extra=disp)
            if method == "DELETE" and not rest:
                return self._send(
                    200, {"user_id": user, "erased": p.delete_profile(api.engine, user)}
                )
        if method == "PUT" and len(path) == 3 and path[:2] == ["v1", "devices"]:
            if self._auth(None):
                user_id = self._body().get("user_id")
                if not isinstance(user_id, str):
                    raise EarmarkError('body must be {"user_id": "..."}')
                return self._send(200, p.register_device(api.engine, path[2], user_id, api.cfg))
            return None
        if (
            method == "POST"
            and len(path) == 4
            and path[:2] == ["v1", "users"]
            and path[3] == "tokens"
        ):
            if self._auth(None):
                return self._send(
                    201, {"user_id": path[2], "token": p.issue_token(api.engine, path[2])}
                )
            return None
        return self._error(404, f"no route {method} /{'/'.join(path)}")

    def _health(self) -> None:
        api = self.server_api
        try:
            with api.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            db = "ok"
        except Exception as err:  # reported, not raised: health must answer
            db = f"error: {type(err).__name__}"
        broker = (
            "n/a"
            if api.broker_up is None
            else ("connected" if api.broker_up.is_set() else "disconnected")
        )
        ok = db == "ok" and broker != "disconnected"
        self._send(
            200 if ok else 503, {"status": "ok" if ok else "degraded", "db": db, "broker": broker}
        )
