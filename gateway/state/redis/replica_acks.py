"""Writes that replicas hold before the gateway acts on them: Redis `WAIT`, grouped.

Redis replicates asynchronously: a master that dies loses what it acknowledged and had
not yet passed on, and the replica promoted in its place knows nothing of it. The writes
a failover must not lose (an idempotency claim before its request is forwarded, the
answer before the client receives it, an admin change before the admin API answers 200)
are therefore acknowledged: the gateway goes on only once the required replicas hold
them.

- **A connection of its own.** `WAIT` blocks the connection it is sent on, so it never
  travels on the hot path's pipelined wire, where every read would stall behind it.
- **Group commit.** The commands callers ask for while one group is in flight are
  gathered into the next, sent in one write and closed by one `WAIT`: one round trip
  for a write and its acknowledgement, one `WAIT` per group, one group in flight at a
  time, so a stalled replica costs a caller at most two timeouts, never a queue of them.
- **A reply that wrote nothing waits for nothing.** Each caller hears its own reply as
  it arrives; only one whose command wrote waits for the group's `WAIT` (a replayed
  answer, a duplicate in flight: at once).
- **A marker in every group.** `WAIT` waits for its own connection's last write, and a
  command run again after a dropped connection (harmless: each is guarded by an owner
  token) may write nothing the second time. So every group also writes a marker
  (`INCR og:acks`) just before its `WAIT`: the replication stream is one ordered stream,
  and the marker's acknowledgement covers every write Redis ran before it, on any
  connection. `barrier()` asks for that alone (for the writes of redis-py's client).
- **Counted, never assumed.** `WAIT` answers how many replicas acknowledged; a write is
  held when that reaches the number required when its group was sent.
- **How many are required** (`redis.min_replica_acks`): fixed, or `auto`: 1 with a
  Sentinel URL; otherwise 1 while the master's `INFO replication` reports a connected
  replica (followed on the sync timer, and 1 until the master was first asked).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.state.redis.wire import Wire

MARKER_KEY = "og:acks"  # a counter: the marker write of every group

Command = tuple[str | bytes | int | float, ...]


@dataclass(slots=True)
class _Group:
    held: asyncio.Future[bool]
    commands: list[Command] = field(default_factory=list)
    replies: list[asyncio.Future[Any]] = field(default_factory=list)

    def hear(self, index: int, reply: Any) -> None:
        if index < len(self.replies) and not self.replies[index].done():
            self.replies[index].set_result(reply)

    def fail(self, exc: Exception | None) -> None:
        """Every caller's reply and the acknowledgement fail with `exc`; None: cancelled."""
        for future in [*self.replies, self.held]:
            if future.done():
                continue
            if exc is None:
                future.cancel()
            else:
                future.set_exception(exc)


def _read_outcome(future: asyncio.Future[Any]) -> None:
    """Read it even when every waiting caller was cancelled."""
    if not future.cancelled():
        future.exception()


class ReplicaAcks:
    """Commands on their own connection, each group of them closed by a marker and `WAIT`."""

    def __init__(self, wire: Wire, required: Literal["auto"] | int, sentinel: bool,
                 timeout_ms: int) -> None:
        self._wire = wire
        self._timeout_ms = timeout_ms
        self.follows_master = required == "auto" and not sentinel
        # Until the master was asked, "auto" assumes a replica: fail closed, not open.
        self.required = 1 if required == "auto" else required
        self._gathering: _Group | None = None
        self._sending = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def replicas_connected(self, count: int) -> None:
        """What the master reports, for "auto" without Sentinel."""
        if self.follows_master:
            self.required = 1 if count > 0 else 0

    async def write(self, *command: str | bytes | int | float
                    ) -> tuple[Any, Callable[[], Awaitable[bool]]]:
        """The command's reply, as soon as it arrives, and a function whose awaited result
        says whether the required replicas hold it (and every write before it) within the
        timeout: call it only when the command wrote. Raises `WireError` when Redis cannot
        be reached."""
        group = self._group()
        # The caller's own: cancelled with it, which leaves the group and the others alone.
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        group.commands.append(command)
        group.replies.append(reply)
        held = group.held
        return await reply, lambda: asyncio.shield(held)

    async def barrier(self) -> bool:
        """Whether the required replicas hold every write Redis ran before this call."""
        return await asyncio.shield(self._group().held)

    def _group(self) -> _Group:
        group = self._gathering
        if group is None:
            group = self._gathering = _Group(asyncio.get_running_loop().create_future())
            group.held.add_done_callback(_read_outcome)
            task = asyncio.create_task(self._send(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return group

    async def _send(self, group: _Group) -> None:
        async with self._sending:  # the next group gathers meanwhile
            if self._gathering is group:
                self._gathering = None
            required = self.required
            closing = [("INCR", MARKER_KEY), ("WAIT", required, self._timeout_ms)]
            try:
                replies = await self._wire.call_together([*group.commands, *closing],
                                                         group.hear)
            except asyncio.CancelledError:
                group.fail(None)
                raise
            except Exception as exc:  # WireError: for every caller of the group
                group.fail(exc)
                return
            acks = replies[-1]
            group.held.set_result(isinstance(acks, int) and acks >= required)

    def close(self) -> None:
        self._wire.close()
