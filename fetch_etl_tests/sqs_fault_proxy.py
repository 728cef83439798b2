"""An HTTP proxy in front of a real SQS server (moto, LocalStack) that makes chosen calls fail the way SQS can.

Faults go through the wire, not through our own methods, so the code under test meets them exactly as it
would meet AWS: a whole call answered with an error, or a batch call whose answer lists some entries under
`Failed`. Both wire formats are understood: the JSON protocol (`X-Amz-Target: AmazonSQS.<Action>`, JSON
body) and the query protocol (form-encoded `Action=<Action>&...`, XML answers).

Rule API (every method returns the `Rule`, whose `hits` counts how often it fired; rules apply in the order
added, until `times` is used up; `clear()` removes them all, `remove(rule)` one):

    with SqsFaultProxy(moto_endpoint) as proxy:
        queue = proxy.queue_url(moto_queue_url)        # the same queue, addressed through the proxy
        proxy.fail_entries("DeleteMessageBatch")       # every entry of every DeleteMessageBatch: Failed
        proxy.fail_entries("SendMessageBatch", body_contains="POISON", code="InvalidParameterValue",
                           sender_fault=True)          # only entries whose MessageBody contains the marker
        proxy.fail_call("SendMessageBatch", queue="q-1-dlq", status=400, code="BatchRequestTooLong")
        proxy.fail_call("SendMessageBatch", queue="q-1-dlq", status=403, code="AccessDenied", times=1)
        proxy.fail_call(None, status=503, times=2)     # any action: a bare 503 (no error body), twice
        gate = proxy.hold_calls("SendMessageBatch", queue="q-1-dlq")  # paused until gate.release.set()
        gate.arrived.wait(10)                          # a held call has reached the proxy
        proxy.calls                                    # [(action, queue name), ...] of every request seen

- `action`: the SQS action name (`SendMessageBatch`, `DeleteMessageBatch`, `ReceiveMessage`...); None is any.
- `queue`: a queue name or URL; the rule applies to calls on that queue only (compared by name, so a moto
  URL and a proxied URL of one queue match alike). None is any queue.
- `fail_entries(..., body_contains=S | entry=predicate)`: which entries of a batch call fail (default all).
  The other entries go on to the server (the request is rewritten without the failed ones); the answer
  merges the server's `Successful`/`Failed` with ours. `code`, `message`, `sender_fault` shape each entry.
- `hold_calls(action, queue, times)`: matching calls wait at the proxy until `rule.release` is set, then go
  on to the server unchanged; `rule.arrived` is set when the first one reaches the proxy. For interleaving
  two clients deterministically (one paused mid-call while the other runs).
- `fail_call(..., status, code, message)`: the whole call gets this HTTP error, in the request's protocol
  (JSON `__type` with the `x-amzn-query-error` header AWS sends, or query `<ErrorResponse>`). `code` is the
  error's JSON-protocol name; the query code comes from `query_code`, else SQS's own mapping
  (BatchRequestTooLong -> AWS.SimpleQueueService.BatchRequestTooLong), else `code`. `code=None` answers
  with the status and an empty body, like a load balancer's 5xx. Nothing reaches the server.

Binds 127.0.0.1 on port 0 (`port`, `endpoint` tell where); `stop()` shuts it down and joins its thread.
A rewritten request keeps its old signature: emulators do not check SigV4, AWS would (never point it there).
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from xml.sax.saxutils import escape

from fetch_etl.queue.query import query_session
from fetch_etl_tests.loopback_wsgi import LoopbackWsgiServer, StartResponse, forward


def _query_codes() -> dict[str, str]:
    """JSON error name -> query error code, from the vendored query model's error shapes (SQS's own mapping)."""
    model = query_session().client("sqs", region_name="us-east-1").meta.service_model  # no request is made
    return {shape.name: shape.metadata.get("error", {}).get("code") or shape.name for shape in model.error_shapes}


QUERY_CODES = _query_codes()
XMLNS = "http://queue.amazonaws.com/doc/2012-11-05/"
JSON_CONTENT_TYPE = "application/x-amz-json-1.0"

Entry = dict[str, Any]  # one batch entry in the JSON protocol's shape: Id, MessageBody, ReceiptHandle...


@dataclass
class Rule:
    """One fault; `hits` counts the calls (fail_call) or entries (fail_entries) it failed."""

    action: str | None
    queue: str | None
    times: int | None
    status: int = 400
    code: str | None = "InternalError"
    query_code: str | None = None
    message: str = "injected by sqs_fault_proxy"
    sender_fault: bool = False
    entry: Callable[[Entry], bool] | None = None  # set: an entry rule; None: a whole-call rule
    hits: int = 0
    hold: bool = False  # a hold rule: pause the call until `release` is set, then forward it
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def matches(self, action: str, queue: str | None) -> bool:
        return (
            (self.times is None or self.times > 0)
            and self.action in (None, action)
            and (self.queue is None or _queue_name(self.queue) == queue)
        )


@dataclass
class _Request:
    """An SQS request, protocol-neutral: the action, its queue and (for batch calls) its entries."""

    protocol: str  # json | query
    action: str
    params: dict[str, Any] | list[tuple[str, str]]
    queue: str | None
    entries: list[Entry]


def _queue_name(url_or_name: str | None) -> str | None:
    return None if not url_or_name else url_or_name.rstrip("/").rsplit("/", 1)[-1]


class SqsFaultProxy(LoopbackWsgiServer):
    """Proxies every request to the upstream SQS endpoint, except where a rule says to fail it."""

    thread_name = "sqs-fault-proxy"

    def __init__(self, upstream_endpoint: str) -> None:
        super().__init__()
        parts = urlsplit(upstream_endpoint)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self.calls: list[tuple[str, str | None]] = []

    # --- rules ------------------------------------------------------------------------------------

    def fail_call(
        self,
        action: str | None,
        *,
        queue: str | None = None,
        status: int = 400,
        code: str | None = "InternalError",
        query_code: str | None = None,
        message: str = "injected by sqs_fault_proxy",
        times: int | None = None,
    ) -> Rule:
        """The whole call fails with this HTTP error (code=None: status only, empty body)."""
        return self._add(Rule(action, queue, times, status, code, query_code, message))

    def fail_entries(
        self,
        action: str,
        *,
        queue: str | None = None,
        body_contains: str | None = None,
        entry: Callable[[Entry], bool] | None = None,
        code: str = "InternalError",
        message: str = "injected by sqs_fault_proxy",
        sender_fault: bool = False,
        times: int | None = None,
    ) -> Rule:
        """Entries of a batch call are answered as Failed: all, those whose body contains S, or `entry(e)`."""
        if body_contains is not None:
            marker = body_contains
            entry = lambda e: marker in str(e.get("MessageBody", ""))  # noqa: E731
        predicate = entry or (lambda _e: True)
        return self._add(
            Rule(action, queue, times, code=code, message=message, sender_fault=sender_fault, entry=predicate)
        )

    def hold_calls(self, action: str | None, *, queue: str | None = None, times: int | None = None) -> Rule:
        """Matching calls wait until `rule.release` is set, then reach the server unchanged."""
        return self._add(Rule(action, queue, times, hold=True))

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules.remove(rule)

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def _add(self, rule: Rule) -> Rule:
        with self._lock:
            self._rules.append(rule)
        return rule

    # --- lifecycle --------------------------------------------------------------------------------

    # --- requests ---------------------------------------------------------------------------------

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        request = _parse(environ, body)
        if request is None:  # not an SQS action we understand: pass it on untouched
            return self._forward(environ, body, start_response)
        with self._lock:
            self.calls.append((request.action, request.queue))
            rules = [r for r in self._rules if r.matches(request.action, request.queue)]
            hold = next((r for r in rules if r.hold), None)
            if hold is not None:
                hold.hits += 1
                if hold.times is not None:
                    hold.times -= 1
            rules = [r for r in rules if not r.hold]
            call_rule = next((r for r in rules if r.entry is None), None)
            if call_rule is not None:
                call_rule.hits += 1
                if call_rule.times is not None:
                    call_rule.times -= 1
            failed = [] if call_rule is not None else self._failed_entries(request, rules)
        if hold is not None:
            hold.arrived.set()
            hold.release.wait(timeout=60)
        if call_rule is not None:
            return _error_answer(request, call_rule, start_response)
        if not failed:
            return self._forward(environ, body, start_response)
        kept = [e for e in request.entries if e["Id"] not in failed]
        if not kept:
            return _batch_answer(request, [], failed, start_response)
        status, headers, answer = self._send(environ, _without_entries(request, set(failed)))
        if status >= 300:
            start_response(f"{status} {http.client.responses.get(status, 'Error')}", headers)
            return [answer]
        return [_merge_failed(request, answer, failed, headers, status, start_response)]

    def _failed_entries(self, request: _Request, rules: list[Rule]) -> dict[str, Rule]:
        """Entry Id -> the rule that fails it (the first one matching, while its `times` last)."""
        failed: dict[str, Rule] = {}
        for entry in request.entries:
            for rule in rules:
                if rule.entry is not None and (rule.times is None or rule.times > 0) and rule.entry(entry):
                    rule.hits += 1
                    if rule.times is not None:
                        rule.times -= 1
                    failed[entry["Id"]] = rule
                    break
        return failed

    def _forward(self, environ: dict[str, Any], body: bytes, start_response: StartResponse) -> Iterable[bytes]:
        status, headers, payload = self._send(environ, body)
        start_response(f"{status} {http.client.responses.get(status, 'Error')}", headers)
        return [payload]

    def _send(self, environ: dict[str, Any], body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        status, _reason, headers, payload = forward(self._upstream, environ, body)
        return status, headers, payload


# --- the two wire formats ------------------------------------------------------------------------


def _parse(environ: dict[str, Any], body: bytes) -> _Request | None:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            return None
        entries = [dict(e) for e in params.get("Entries", [])]
        return _Request("json", target.rsplit(".", 1)[-1], params, _queue_name(params.get("QueueUrl")), entries)
    pairs = parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    form = dict(pairs)
    if "Action" not in form:
        return None
    action = form["Action"]
    return _Request("query", action, pairs, _queue_name(form.get("QueueUrl")), _query_entries(action, pairs))


def _query_entries(action: str, pairs: list[tuple[str, str]]) -> list[Entry]:
    """`<Action>RequestEntry.N.Field` parameters as JSON-shaped entries (top-level fields only), in order."""
    pattern = re.compile(rf"{re.escape(action)}RequestEntry\.(\d+)\.(\w+)$")
    by_number: dict[int, Entry] = {}
    for key, value in pairs:
        if match := pattern.match(key):
            by_number.setdefault(int(match[1]), {})[match[2]] = value
    return [by_number[n] for n in sorted(by_number)]


def _without_entries(request: _Request, drop: set[str]) -> bytes:
    """The request body without the entries whose Id is in `drop` (query entries renumbered from 1)."""
    if request.protocol == "json":
        assert isinstance(request.params, dict)
        return json.dumps({**request.params, "Entries": [e for e in request.entries if e["Id"] not in drop]}).encode()
    pattern = re.compile(rf"({re.escape(request.action)}RequestEntry)\.(\d+)\.(.+)$")
    ids = {str(n): e["Id"] for n, e in enumerate(request.entries, start=1)}
    numbers = sorted({int(m[2]) for key, _ in request.params if (m := pattern.match(key))})
    renumber = {str(old): str(new) for new, old in enumerate((n for n in numbers if ids.get(str(n)) not in drop), 1)}
    pairs: list[tuple[str, str]] = []
    for key, value in request.params:
        match = pattern.match(key)
        if match is None:
            pairs.append((key, value))
        elif match[2] in renumber:
            pairs.append((f"{match[1]}.{renumber[match[2]]}.{match[3]}", value))
    return urlencode(pairs).encode()


def _failed_json(failed: dict[str, Rule]) -> list[dict[str, Any]]:
    return [
        {"Id": entry_id, "SenderFault": rule.sender_fault, "Code": rule.code, "Message": rule.message}
        for entry_id, rule in failed.items()
    ]


def _failed_xml(failed: dict[str, Rule]) -> str:
    return "".join(
        f"<BatchResultErrorEntry><Id>{escape(entry_id)}</Id><SenderFault>{str(rule.sender_fault).lower()}"
        f"</SenderFault><Code>{escape(str(rule.code))}</Code><Message>{escape(rule.message)}</Message>"
        "</BatchResultErrorEntry>"
        for entry_id, rule in failed.items()
    )


def _batch_answer(
    request: _Request, successful: list[Any], failed: dict[str, Rule], start_response: StartResponse
) -> Iterable[bytes]:
    """A batch answer made here (nothing left to forward): every entry Failed."""
    if request.protocol == "json":
        start_response("200 OK", [("Content-Type", JSON_CONTENT_TYPE)])
        return [json.dumps({"Successful": successful, "Failed": _failed_json(failed)}).encode()]
    action = request.action
    xml = (
        f'<?xml version="1.0"?><{action}Response xmlns="{XMLNS}"><{action}Result>{_failed_xml(failed)}'
        f"</{action}Result><ResponseMetadata><RequestId>sqs-fault-proxy</RequestId></ResponseMetadata>"
        f"</{action}Response>"
    )
    start_response("200 OK", [("Content-Type", "text/xml")])
    return [xml.encode()]


def _merge_failed(
    request: _Request,
    answer: bytes,
    failed: dict[str, Rule],
    headers: list[tuple[str, str]],
    status: int,
    start_response: StartResponse,
) -> bytes:
    """The server's answer for the entries it got, plus ours as Failed."""
    if request.protocol == "json":
        parsed = json.loads(answer or b"{}")
        parsed["Failed"] = [*parsed.get("Failed", []), *_failed_json(failed)]
        merged = json.dumps(parsed).encode()
    else:
        opening, closing = f"<{request.action}Result>".encode(), f"</{request.action}Result>".encode()
        if closing not in answer:  # an empty result element may be self-closing
            answer = re.sub(rf"<{request.action}Result\s*/>".encode(), opening + closing, answer)
        merged = answer.replace(closing, _failed_xml(failed).encode() + closing, 1)
    start_response(f"{status} {http.client.responses.get(status, 'OK')}", headers)
    return merged


def _error_answer(request: _Request, rule: Rule, start_response: StartResponse) -> Iterable[bytes]:
    """The whole call's error, as the request's protocol spells it."""

    status_line = f"{rule.status} {http.client.responses.get(rule.status, 'Error')}"
    if rule.code is None:
        start_response(status_line, [("Content-Type", "text/plain")])
        return [b""]
    kind = "Receiver" if rule.status >= 500 else "Sender"
    query_code = rule.query_code or QUERY_CODES.get(rule.code, rule.code)
    if request.protocol == "json":
        headers = [("Content-Type", JSON_CONTENT_TYPE), ("x-amzn-query-error", f"{query_code};{kind}")]
        start_response(status_line, headers)
        return [json.dumps({"__type": f"com.amazonaws.sqs#{rule.code}", "message": rule.message}).encode()]
    xml = (
        f'<?xml version="1.0"?><ErrorResponse xmlns="{XMLNS}"><Error><Type>{kind}</Type><Code>{escape(query_code)}'
        f"</Code><Message>{escape(rule.message)}</Message></Error><RequestId>sqs-fault-proxy</RequestId>"
        "</ErrorResponse>"
    )
    start_response(status_line, [("Content-Type", "text/xml")])
    return [xml.encode()]
