"""Decisions at arrival: taken on a request as soon as the parser has read its head.

Under a crowd most requests are refused, so the price of a refusal decides how
much CPU is left for the requests let in. Through aiohttp a refusal costs a
request object, a task, the middleware and a response object; here it costs a
few header lookups and one write. The connection layer (`connections.py`) shows
`Arrivals.route_of` each request aiohttp's parser reads, when every earlier
request on the connection is answered. Only a request with nothing unusual in it
is decided here:

- HTTP/1.1, no body, no `Connection`, `Upgrade`, `Origin` (CORS answers need the
  whole request) or `Expect` header;
- the exact path of a proxied route (a path id of ASCII letters, digits, `-` and
  `_`).

It is counted by admission at once, or refused with prebuilt bytes: `503
OVERLOADED` with the client's request id and language, the same answer the
handler would give. The connection stays open. A client that came back before
the Retry-After of its last refusal ended is told to wait twice as long (up to
8 s; see `connections.EdgeConnection._refuse`).

The request is the parser's, never a reading of raw bytes of our own: what is
answered here is exactly a request the handler would have been given, whatever
the bytes' split across reads (a head that ends a body's read, a head the parser
holds unfinished, bytes it refuses).

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
from typing import Protocol

from aiohttp import HttpVersion11

from gateway.backends.breaker import Breaker
from gateway.contract import identity, overload, validation
from gateway.contract.errors import CIRCUIT_OPEN, MAINTENANCE, OVERLOADED, ErrorSpec, GatewayError
from gateway.contract.problem import negotiate_language
from gateway.contract.routes import RoutePolicy
from gateway.edge.admission import Admission
from gateway.edge.connections import ParsedHead
from gateway.edge.middleware import Edge, PrebuiltError
from gateway.pipeline.maintenance import BYPASS_HEADER, Maintenance, RouteWindows, Window
from gateway.pipeline.waiting_room import RouteGate

# Headers that send a request the usual way.
_USUAL_WAY = ("Content-Length", "Transfer-Encoding", "Connection", "Upgrade", "Origin",
              "Expect")
_MAX_PREBUILT = 64  # answers kept per kind; past this they are built again
_STATUSES = {spec.code: spec.status for spec in (OVERLOADED, CIRCUIT_OPEN, MAINTENANCE)}
_MAX_ID_BYTES = 128  # a path id longer than this is checked the usual way
MAX_DOUBLINGS = 3  # Retry-After 1, 2, 4, 8 s


class RefusalFigures(Protocol):
    """What the refusals at arrival report, in batches (the metrics implement it)."""

    def count_requests(self, route: str, status: int, code: str, count: int) -> None: ...

    def shed_requests(self, route: str, count: int) -> None: ...

    def breaker_rejected(self, backend: str, count: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class EarlyRefusal:
    """A route whose maintenance windows and breaker may answer its plain heads at arrival,
    with what decides per request whether they do."""

    maintenance: Maintenance
    windows: RouteWindows
    breaker: Breaker
    gate: RouteGate


def refuses_early(policy: RoutePolicy, *, limited: bool, keyed: bool, stale: bool) -> bool:
    """Whether a maintenance window and an open breaker may answer the route's plain
    requests at arrival: a GET by id (no query to validate), with nothing the handler does
    before them that could answer otherwise (an API key's 401 or 403, a rate limit's 429,
    a stale answer)."""
    return (policy.method == "GET" and policy.query_schema is None
            and not (limited or keyed or stale))


class Arrivals:
    """Which proxied route a raw request head asks for, and the refusals as bytes."""

    def __init__(self, admission: Admission, routes: Iterable[RoutePolicy], edge: Edge,
                 metrics: RefusalFigures, *, holds: bool = True,
                 early: Mapping[str, EarlyRefusal] | None = None) -> None:
        self.holds = holds  # see `overload.hold_early_retries`
        self.enter = admission.enter
        self.leave = admission.leave
        # By method and path; the table's templates have one id, at the end.
        self._exact: dict[tuple[str, str], RoutePolicy] = {}
        self._templated: dict[tuple[str, str], RoutePolicy] = {}
        for policy in routes:
            if policy.path_params:
                prefix = policy.path[:policy.path.index("{")]  # `/v1/orders/{order_id}`
                self._templated[policy.method, prefix] = policy
            else:
                self._exact[policy.method, policy.path] = policy
        self._edge = edge
        base = GatewayError(OVERLOADED).retry_after or 1
        # Retry-After doubles each time in a row a client came back before it ended.
        self.retry_after_s = tuple(float(base * 2**n) for n in range(MAX_DOUBLINGS + 1))
        self._answers = tuple(edge.prebuilt(GatewayError(OVERLOADED, retry_after_s=int(s)))
                              for s in self.retry_after_s)
        self._metrics = metrics
        # Refusals since the last `count`, by route and code.
        # (Keyed by the code: hashing an ErrorSpec hashes all its texts, per refusal.)
        self._refused: dict[tuple[str, str], int] = {}
        self._policies = {p.path: p for p in [*self._exact.values(), *self._templated.values()]}
        self._early = dict(early or {})  # by route path
        self._breaker_answers: dict[tuple[str, int], PrebuiltError] = {}
        # By window object (a window changed through the API is a new one) and Retry-After.
        self._window_answers: dict[tuple[int, int | None], tuple[Window, PrebuiltError]] = {}

    def route_of(self, message: ParsedHead) -> RoutePolicy | None:
        """The proxied route of a request the parser read, if it is plain enough to decide
        at arrival."""
        if message.version != HttpVersion11:
            return None
        path = message.path.partition("?")[0]
        policy = self._exact.get((message.method, path))
        if policy is None:
            prefix, _, last = path.rpartition("/")
            policy = self._templated.get((message.method, prefix + "/"))
            if policy is None or not _plain_id(last):
                return None
        headers = message.headers
        for name in _USUAL_WAY:
            if name in headers:
                return None
        return policy

    def refusal(self, message: ParsedHead, policy: RoutePolicy, doublings: int) -> bytes:
        """The 503 for a request `route_of` found, its Retry-After doubled `doublings` times;
        counted (see `count`) and logged."""
        return self._refuse(message, policy, self._answers[doublings], OVERLOADED)

    def early_refusal(self, message: ParsedHead,
                      policy: RoutePolicy) -> tuple[bytes, int | None] | None:
        """For a request `route_of` found: a maintenance window's or an open breaker's answer
        and its Retry-After, when one refuses the route now and nothing the handler checks
        first could answer otherwise; None: the usual way."""
        early = self._early.get(policy.path)
        if early is None or early.gate.covered:
            return None
        window = early.maintenance.refusal(early.windows, policy.method) if (
            early.windows.windows) else None
        left_s = None if window is not None else early.breaker.held_back_for()
        if window is None and left_s is None:
            return None
        if not _checks_pass(message, policy):
            return None
        if window is not None:
            if BYPASS_HEADER in message.headers:
                return None  # the handler judges the token (and audits its use)
            err = early.maintenance.error(window)
            key = (id(window), err.retry_after)
            kept = self._window_answers.get(key)
            if kept is None or kept[0] is not window:
                if len(self._window_answers) >= _MAX_PREBUILT:
                    self._window_answers.clear()
                kept = self._window_answers[key] = (window, self._edge.prebuilt(err))
            return self._refuse(message, policy, kept[1], MAINTENANCE), err.retry_after
        assert left_s is not None
        retry_after = max(1, math.ceil(left_s))
        answer = self._breaker_answers.get((policy.backend, retry_after))
        if answer is None:
            if len(self._breaker_answers) >= _MAX_PREBUILT:
                self._breaker_answers.clear()
            answer = self._breaker_answers[(policy.backend, retry_after)] = (
                self._edge.prebuilt(early.breaker.rejection(retry_after)))
        return self._refuse(message, policy, answer, CIRCUIT_OPEN), retry_after

    def _refuse(self, message: ParsedHead, policy: RoutePolicy, answer: PrebuiltError,
                spec: ErrorSpec) -> bytes:
        headers = message.headers
        rid = identity.request_id(headers.get("X-Request-ID"))
        lang = negotiate_language(headers.get("Accept-Language"))
        key = (policy.path, spec.code)
        self._refused[key] = self._refused.get(key, 0) + 1
        if self._edge.logs_access:
            self._edge.log_line(rid, policy.method, policy.path,
                                message.path.partition("?")[0], spec.status, spec.code, 0.0)
        return answer.bytes_for(rid, lang)

    def count(self) -> None:
        """Add the refusals since the last call to the metrics (on the housekeeping timer
        and before a scrape: a Prometheus update per refusal cost as much as the rest of it)."""
        refused, self._refused = self._refused, {}
        for (route, code), count in refused.items():
            policy = self._policies[route]
            self._metrics.count_requests(route, _STATUSES[code], code, count)
            if code == OVERLOADED.code:
                self._metrics.shed_requests(policy.path, count)
            elif code == CIRCUIT_OPEN.code:
                self._metrics.breaker_rejected(policy.backend, count)


def _checks_pass(message: ParsedHead, policy: RoutePolicy) -> bool:
    """Whether the steps a handler takes before maintenance and the breaker let this request
    through: otherwise they answer it, the usual way."""
    headers = message.headers
    try:
        identity.client_scope(headers.get("X-Client-ID"))
        if (deadline := headers.get(overload.DEADLINE_HEADER)) is not None:
            overload.deadline_of(0.0, 1.0, deadline)
        validation.check_path_ids({policy.path_params[0]:
                                   message.path.partition("?")[0].rpartition("/")[2]})
    except GatewayError:
        return False
    return True


def _plain_id(segment: str) -> bool:
    return (0 < len(segment) <= _MAX_ID_BYTES and segment.isascii()
            and segment.replace("-", "").replace("_", "").isalnum())
