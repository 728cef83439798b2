"""A small HTTP proxy in front of a real SQS server, for what the real servers cannot be made to do.

In front of moto (`reject_json=True`, the default) it is a double of the reference image's 2022 LocalStack:
any JSON-protocol request (`X-Amz-Target` header or an `application/x-amz-json-1.0` body) gets HTTP 500 with
Werkzeug's HTML error page, while query-protocol requests (form-encoded POST) go through unchanged. In front
of the real LocalStack 1.0.4 (`reject_json=False`) everything goes through and the server refuses JSON itself.
Either way it counts what it saw, keeps the last Authorization header, and `fail_next` makes the next query
answers fail on purpose (a status, a throttling error, a body that is not XML): faults neither server
produces on demand. It binds to 127.0.0.1 only and is stopped by `stop()`.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from fetch_etl_tests.loopback_wsgi import LoopbackWsgiServer, StartResponse, forward

# What Werkzeug (and so that LocalStack) answers for an unhandled exception.
ERROR_500 = (
    b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n"
    b"<p>The server encountered an internal error and was unable to complete your request.</p>\n"
)


class LegacySqsDouble(LoopbackWsgiServer):
    """Proxies to `upstream`; HTTP 500 for JSON-protocol requests when `reject_json`; counts what it saw."""

    thread_name = "legacy-sqs"

    def __init__(self, upstream: str, *, reject_json: bool = True) -> None:
        super().__init__()
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._reject_json = reject_json
        self._lock = threading.Lock()
        self.json_requests = 0
        self.json_rejected = 0
        self.query_proxied = 0
        self.query_actions: list[str] = []
        self.last_authorization = ""
        self._planned_failures: list[tuple[int, bytes, str]] = []

    def fail_next(self, count: int, status: int = 503, body: bytes = b"", content_type: str = "text/plain") -> None:
        """The next `count` query requests get this answer instead of the server's."""
        with self._lock:
            self._planned_failures += [(status, body, content_type)] * count

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        content_type = environ.get("CONTENT_TYPE", "")
        if environ.get("HTTP_X_AMZ_TARGET") or content_type.startswith("application/x-amz-json"):
            with self._lock:
                self.json_requests += 1
                self.json_rejected += self._reject_json
            if not self._reject_json:
                return self._proxy(environ, body, start_response)
            start_response("500 INTERNAL SERVER ERROR", [("Content-Type", "text/html; charset=utf-8")])
            return [ERROR_500]
        with self._lock:
            self.query_proxied += 1
            self.last_authorization = environ.get("HTTP_AUTHORIZATION", "")
            action = next((p[7:] for p in body.decode("utf-8", "replace").split("&") if p.startswith("Action=")), "")
            self.query_actions.append(action)
            planned = self._planned_failures.pop(0) if self._planned_failures else None
        if planned is not None:
            status, answer, kind = planned
            start_response(f"{status} {http.client.responses.get(status, 'Error')}", [("Content-Type", kind)])
            return [answer]
        return self._proxy(environ, body, start_response)

    def _proxy(self, environ: dict[str, Any], body: bytes, start_response: StartResponse) -> Iterable[bytes]:
        status, reason, headers, payload = forward(self._upstream, environ, body)
        start_response(f"{status} {reason}", headers)
        return [payload]
