"""A test double of the reference image's 2022 LocalStack: moto behind a layer that rejects SQS's JSON protocol.

Query-protocol requests (form-encoded POST) go through to moto unchanged; any JSON-protocol request
(`X-Amz-Target` header or an `application/x-amz-json-1.0` body) gets HTTP 500, as that LocalStack answers.
A few knobs make the next query answers fail on purpose (a status, or a body that is not XML) to test
retries and parsing. It binds to 127.0.0.1 only and is stopped by `stop()`.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# What Werkzeug (and so that LocalStack) answers for an unhandled exception.
ERROR_500 = (
    b"<!doctype html>\n<html lang=en>\n<title>500 Internal Server Error</title>\n<h1>Internal Server Error</h1>\n"
    b"<p>The server encountered an internal error and was unable to complete your request.</p>\n"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no request lines on the test output
        pass


class LegacySqsDouble:
    """HTTP 500 for JSON-protocol requests, everything else proxied to moto; counts what it saw."""

    def __init__(self, moto_endpoint: str) -> None:
        parts = urlsplit(moto_endpoint)
        self._moto = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.json_rejected = 0
        self.query_proxied = 0
        self.query_actions: list[str] = []
        self.last_authorization = ""
        self._planned_failures: list[tuple[int, bytes, str]] = []

    @property
    def endpoint(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def queue_url(self, moto_queue_url: str) -> str:
        """The same queue addressed through this double (as LocalStack's own URLs would be)."""
        return self.endpoint + urlsplit(moto_queue_url).path

    def fail_next(self, count: int, status: int = 503, body: bytes = b"", content_type: str = "text/plain") -> None:
        """The next `count` query requests get this answer instead of moto's."""
        with self._lock:
            self._planned_failures += [(status, body, content_type)] * count

    def start(self) -> Self:
        self._server = make_server("127.0.0.1", 0, self._app, _ThreadingWSGIServer, _QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="legacy-sqs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        content_type = environ.get("CONTENT_TYPE", "")
        if environ.get("HTTP_X_AMZ_TARGET") or content_type.startswith("application/x-amz-json"):
            with self._lock:
                self.json_rejected += 1
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
        headers = {
            key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        headers["Host"] = environ.get("HTTP_HOST", "")  # moto builds queue URLs from it: they point back here
        path = environ.get("PATH_INFO", "/") + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
        conn = http.client.HTTPConnection(*self._moto, timeout=60)
        try:
            conn.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            start_response(f"{response.status} {response.reason}", kept)
            return [payload]
        finally:
            conn.close()
