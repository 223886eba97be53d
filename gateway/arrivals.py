"""Decisions at arrival: taken on a request head as soon as it is read.

Under a crowd most requests are refused, so the price of a refusal decides how
much CPU is left for the requests let in. Through aiohttp a refusal costs a
parsed request, a task, the middleware and a response object; here it costs a
few byte searches and one write. The connection layer (`connections.py`) shows
`Arrivals.route_of` each read of an idle connection. A read that is exactly one
request head with nothing unusual in it:

- HTTP/1.1, no body, no `Connection`, `Upgrade` or `Origin` header (CORS answers
  need the whole request);
- the exact path of a proxied route (a path id of letters, digits, `-` and `_`);

is counted by admission at once, or refused with prebuilt bytes: `503
OVERLOADED` with the client's request id and language, the same answer the
handler would give. The connection stays open. A client that came back before
the Retry-After of its last refusal ended is told to wait twice as long (up to
8 s; see `connections.EdgeConnection._refuse`).

A maintenance window and an open breaker answer at arrival too, before
admission, where nothing the handler does before them could answer otherwise
(`EarlyRefusal`): a GET by id (no query or body to validate), no API keys, no
rate limit, no stale answers; checked per request, no waiting room covering
the route, no `X-Maintenance-Bypass`, and valid `X-Client-ID` and
`X-Request-Timeout-Ms` headers. The answer is the handler's `503 MAINTENANCE`
(the window ending last, with its announcement) or `503 CIRCUIT_OPEN`, with
its Retry-After; it is prebuilt once per window or backend and number of
seconds. A call refused here is not counted in the backend's retry budget
(one refused by the handler was).

Refusals at arrival are added to the metrics on the housekeeping timer and
before a scrape; they are not in the duration histogram, which describes
requests that reached a handler. Every other request goes the usual way, and
its handler applies the same admission and breaker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway import identity, overload, validation
from gateway.admission import Admission
from gateway.breaker import Breaker
from gateway.edge import Edge, RawAnswer
from gateway.errors import CIRCUIT_OPEN, MAINTENANCE, OVERLOADED, ErrorSpec, GatewayError
from gateway.maintenance import BYPASS_HEADER, Maintenance, RouteWindows, Window
from gateway.observability import Metrics
from gateway.problem import negotiate_language
from gateway.routes import RoutePolicy
from gateway.waiting_room import RouteGate

_HEAD_END = b"\r\n\r\n"
# Headers (lowercased, as they follow a line break) that send a request the usual way.
_USUAL_WAY = (b"\ncontent-length:", b"\ntransfer-encoding:", b"\nconnection:",
              b"\nupgrade:", b"\norigin:", b"\nexpect:")
_REQUEST_ID = b"\nx-request-id:"
_ACCEPT_LANGUAGE = b"\naccept-language:"
_CLIENT_ID = b"\nx-client-id:"
_DEADLINE = b"\n" + overload.DEADLINE_HEADER.lower().encode() + b":"
_BYPASS = b"\n" + BYPASS_HEADER.lower().encode() + b":"
_MAX_PREBUILT = 64  # answers kept per kind; past this they are built again
_STATUSES = {spec.code: spec.status for spec in (OVERLOADED, CIRCUIT_OPEN, MAINTENANCE)}
_MAX_ID_BYTES = 128  # a path id longer than this is checked the usual way
MAX_DOUBLINGS = 3  # Retry-After 1, 2, 4, 8 s


@dataclass(frozen=True, slots=True)
class EarlyRefusal:
    """A route whose maintenance windows and breaker may answer its plain heads at arrival,
    with what decides per request whether they do."""

    maintenance: Maintenance
    windows: RouteWindows
    breaker: Breaker
    gate: RouteGate


class Arrivals:
    """Which proxied route a raw request head asks for, and the refusals as bytes."""

    def __init__(self, admission: Admission, routes: Iterable[RoutePolicy], edge: Edge,
                 metrics: Metrics, *, holds: bool = True,
                 early: Mapping[str, EarlyRefusal] | None = None) -> None:
        self.holds = holds  # see `overload.hold_early_retries`
        self.enter = admission.enter
        self.leave = admission.leave
        self._exact: dict[bytes, RoutePolicy] = {}
        self._templated: dict[bytes, RoutePolicy] = {}
        for policy in routes:
            method = policy.method.encode()
            if policy.path_params:
                # The table's templates have one id, at the end: `/v1/orders/{order_id}`.
                prefix = policy.path[:policy.path.index("{")]
                self._templated[method + b" " + prefix.encode()] = policy
            else:
                self._exact[method + b" " + policy.path.encode()] = policy
        self._edge = edge
        base = GatewayError(OVERLOADED).retry_after or 1
        # Retry-After doubles each time in a row a client came back before it ended.
        self.retry_after_s = tuple(float(base * 2**n) for n in range(MAX_DOUBLINGS + 1))
        self._answers = tuple(edge.raw_answer(GatewayError(OVERLOADED, retry_after_s=int(s)))
                              for s in self.retry_after_s)
        self._metrics = metrics
        # Refusals since the last `count`, by route and code.
        # (Keyed by the code: hashing an ErrorSpec hashes all its texts, per refusal.)
        self._refused: dict[tuple[str, str], int] = {}
        self._policies = {p.path: p for p in [*self._exact.values(), *self._templated.values()]}
        self._early = dict(early or {})  # by route path
        self._breaker_answers: dict[tuple[str, int], RawAnswer] = {}
        # By window object (a window changed through the API is a new one) and Retry-After.
        self._window_answers: dict[tuple[int, int | None], tuple[Window, RawAnswer]] = {}

    def route_of(self, data: bytes) -> RoutePolicy | None:
        """The proxied route `data` asks for, if it is one whole plain request head."""
        end = data.find(_HEAD_END)
        if end != len(data) - 4:
            return None
        line_end = data.find(b"\r\n")
        method_path, _, version = data[:line_end].rpartition(b" ")
        if version != b"HTTP/1.1":
            return None
        path = method_path.partition(b"?")[0]
        policy = self._exact.get(path)
        if policy is None:
            prefix, _, last = path.rpartition(b"/")
            policy = self._templated.get(prefix + b"/")
            if policy is None or not _plain_id(last):
                return None
        head = data[line_end:].lower()
        for name in _USUAL_WAY:
            if name in head:
                return None
        return policy

    def refusal(self, data: bytes, policy: RoutePolicy, doublings: int) -> bytes:
        """The 503 for a head `route_of` found, its Retry-After doubled `doublings` times;
        counted (see `count`) and logged."""
        return self._refuse(data, data.lower(), policy, self._answers[doublings], OVERLOADED)

    def early_refusal(self, data: bytes,
                      policy: RoutePolicy) -> tuple[bytes, int | None] | None:
        """For a head `route_of` found: a maintenance window's or an open breaker's answer and
        its Retry-After, when one refuses the route now and nothing the handler checks first
        could answer otherwise; None: the usual way."""
        early = self._early.get(policy.path)
        if early is None or early.gate.covered:
            return None
        window = early.maintenance.refusal(early.windows, policy.method) if (
            early.windows.windows) else None
        left_s = None if window is not None else early.breaker.held_back_for()
        if window is None and left_s is None:
            return None
        head = data.lower()
        if not _checks_pass(data, head, policy):
            return None
        if window is not None:
            if _BYPASS in head:
                return None  # the handler judges the token (and audits its use)
            err = early.maintenance.error(window)
            key = (id(window), err.retry_after)
            kept = self._window_answers.get(key)
            if kept is None or kept[0] is not window:
                if len(self._window_answers) >= _MAX_PREBUILT:
                    self._window_answers.clear()
                kept = self._window_answers[key] = (window, self._edge.raw_answer(err))
            return self._refuse(data, head, policy, kept[1], MAINTENANCE), err.retry_after
        assert left_s is not None
        retry_after = max(1, math.ceil(left_s))
        answer = self._breaker_answers.get((policy.backend, retry_after))
        if answer is None:
            if len(self._breaker_answers) >= _MAX_PREBUILT:
                self._breaker_answers.clear()
            answer = self._breaker_answers[(policy.backend, retry_after)] = (
                self._edge.raw_answer(early.breaker.rejection(retry_after)))
        return self._refuse(data, head, policy, answer, CIRCUIT_OPEN), retry_after

    def _refuse(self, data: bytes, head: bytes, policy: RoutePolicy, answer: RawAnswer,
                spec: ErrorSpec) -> bytes:
        rid = identity.request_id(_header(data, head, _REQUEST_ID))
        lang = negotiate_language(_header(data, head, _ACCEPT_LANGUAGE))
        key = (policy.path, spec.code)
        self._refused[key] = self._refused.get(key, 0) + 1
        if self._edge.logs_access:
            self._edge.log_raw(rid, policy.method, policy.path, _target(data).decode("latin-1"),
                               spec.status, spec.code, 0.0)
        return answer.bytes_for(rid, lang)

    def count(self) -> None:
        """Add the refusals since the last call to the metrics (on the housekeeping timer
        and before a scrape: a Prometheus update per refusal cost as much as the rest of it)."""
        refused, self._refused = self._refused, {}
        for (route, code), count in refused.items():
            policy = self._policies[route]
            self._metrics.count_requests(route, _STATUSES[code], code, count)
            if code == OVERLOADED.code:
                self._metrics.shed.labels(policy.route_key).inc(count)
            elif code == CIRCUIT_OPEN.code:
                self._metrics.breaker_rejections.labels(policy.backend).inc(count)


def _checks_pass(data: bytes, head: bytes, policy: RoutePolicy) -> bool:
    """Whether the steps a handler takes before maintenance and the breaker let this head
    through: otherwise they answer it, the usual way."""
    try:
        identity.client_scope(_header(data, head, _CLIENT_ID))
        if (deadline := _header(data, head, _DEADLINE)) is not None:
            overload.deadline_of(0.0, 1.0, deadline)
        validation.check_path_ids({policy.path_params[0]:
                                   _target(data).rpartition(b"/")[2].decode()})
    except GatewayError:
        return False
    return True


def _target(data: bytes) -> bytes:
    """The request target's path, without its query."""
    return data[:data.find(b"\r\n")].split(b" ")[1].partition(b"?")[0]


def _plain_id(segment: bytes) -> bool:
    return 0 < len(segment) <= _MAX_ID_BYTES and segment.translate(None, b"-_").isalnum()


def _header(data: bytes, head: bytes, name: bytes) -> str | None:
    """The value of header `name` (found in the lowercased `head`), as sent."""
    at = head.find(name)
    if at < 0:
        return None
    start = at + len(name)
    return data[start:data.find(b"\r\n", start)].strip().decode("latin-1")
