"""Admission at arrival: the decision taken on a request head as soon as it is read.

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
8 s; see `connections.EdgeConnection._refuse`). The refusals are added to the
metrics on the housekeeping timer; they are not in the duration histogram,
which describes requests that reached a handler. Every other request goes the
usual way, and its handler applies the same admission first.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway import identity
from gateway.admission import Admission
from gateway.edge import Edge
from gateway.errors import OVERLOADED, GatewayError
from gateway.observability import Metrics
from gateway.problem import negotiate_language
from gateway.routes import RoutePolicy

_HEAD_END = b"\r\n\r\n"
# Headers (lowercased, as they follow a line break) that send a request the usual way.
_USUAL_WAY = (b"\ncontent-length:", b"\ntransfer-encoding:", b"\nconnection:",
              b"\nupgrade:", b"\norigin:", b"\nexpect:")
_REQUEST_ID = b"\nx-request-id:"
_ACCEPT_LANGUAGE = b"\naccept-language:"
_MAX_ID_BYTES = 128  # a path id longer than this is checked the usual way
MAX_DOUBLINGS = 3  # Retry-After 1, 2, 4, 8 s


class Arrivals:
    """Which proxied route a raw request head asks for, and the refusal as bytes."""

    def __init__(self, admission: Admission, routes: Iterable[RoutePolicy], edge: Edge,
                 metrics: Metrics, *, holds: bool = True) -> None:
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
        self._refused: dict[str, int] = {}  # by route, since the last `count`
        self._route_keys: dict[str, str] = {}
        for policy in [*self._exact.values(), *self._templated.values()]:
            self._refused[policy.path] = 0
            self._route_keys[policy.path] = policy.route_key

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
        head = data.lower()
        rid = identity.request_id(_header(data, head, _REQUEST_ID))
        lang = negotiate_language(_header(data, head, _ACCEPT_LANGUAGE))
        self._refused[policy.path] += 1
        if self._edge.logs_access:
            target = data[:data.find(b"\r\n")].split(b" ")[1].partition(b"?")[0]
            self._edge.log_raw(rid, policy.method, policy.path, target.decode("latin-1"),
                               OVERLOADED.status, OVERLOADED.code, 0.0)
        return self._answers[doublings].bytes_for(rid, lang)

    def count(self) -> None:
        """Add the refusals since the last call to the metrics (on the housekeeping timer:
        a Prometheus update per refusal cost as much as the rest of it)."""
        for route, refused in self._refused.items():
            if refused:
                self._metrics.count_requests(route, OVERLOADED.status, OVERLOADED.code,
                                             refused)
                self._metrics.shed.labels(self._route_keys[route]).inc(refused)
                self._refused[route] = 0


def _plain_id(segment: bytes) -> bool:
    return 0 < len(segment) <= _MAX_ID_BYTES and segment.translate(None, b"-_").isalnum()


def _header(data: bytes, head: bytes, name: bytes) -> str | None:
    """The value of header `name` (found in the lowercased `head`), as sent."""
    at = head.find(name)
    if at < 0:
        return None
    start = at + len(name)
    return data[start:data.find(b"\r\n", start)].strip().decode("latin-1")
