"""The server part of the test proxies: a threaded WSGI server on 127.0.0.1, on a port the kernel picks."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def forward(
    upstream: tuple[str, int], environ: dict[str, Any], body: bytes
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    """Send the request on to the upstream server as it came; (status, reason, headers, payload) of its answer.

    The Host header is kept: emulators build queue URLs from it, so the URLs they return point back here.
    """
    headers = {key[5:].replace("_", "-").title(): value for key, value in environ.items() if key.startswith("HTTP_")}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    headers["Host"] = environ.get("HTTP_HOST", "")
    path = environ.get("PATH_INFO", "/") + (f"?{environ['QUERY_STRING']}" if environ.get("QUERY_STRING") else "")
    conn = http.client.HTTPConnection(*upstream, timeout=60)
    try:
        conn.request(environ["REQUEST_METHOD"], path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
        return response.status, response.reason, kept, payload
    finally:
        conn.close()


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no request lines on the test output
        pass


class LoopbackWsgiServer:
    """Subclasses answer requests in `_app`; `start()` binds 127.0.0.1:0, `stop()` shuts down and joins."""

    thread_name = "loopback-wsgi"

    def __init__(self) -> None:
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        raise NotImplementedError

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def queue_url(self, upstream_queue_url: str) -> str:
        """The same queue addressed through this server."""
        return self.endpoint + urlsplit(upstream_queue_url).path

    def start(self) -> Self:
        self._server = make_server("127.0.0.1", 0, self._app, _ThreadingWSGIServer, _QuietHandler)
        self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True)
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
