"""Writes that replicas hold before the gateway acts on them: Redis `WAIT`, grouped.

Redis replicates asynchronously: a master that dies loses what it acknowledged and had
not yet passed on, and the replica promoted in its place knows nothing of it. The writes
a failover must not lose (an idempotency claim before its request is forwarded, the
answer before the client receives it, an admin change before the admin API answers 200)
are therefore followed by `WAIT n timeout`, and the gateway goes on only once `n`
replicas hold them.

- **A connection of its own.** `WAIT` blocks the connection it is sent on, so it never
  travels on the hot path's pipelined wire, where every read would stall behind it.
- **Group commit.** `WAIT` covers every write made before it on its connection. The
  writes callers ask for while one group waits are gathered into the next group, closed
  by one `WAIT`: one `WAIT` per group, not per write, and one group in flight at a time,
  so a stalled replica costs each write at most two timeouts, never a queue of them.
- **A write of the connection's own.** Redis keeps each client's own replication offset,
  and `WAIT` waits for that one; the replication stream is one ordered stream, so a write
  made on another connection is covered once any write runs after it on this one.
  `barrier()` sends such a marker (`INCR og:acks`) for the writes of redis-py's client.
- **Counted, never assumed.** `WAIT` answers how many replicas acknowledged; a write is
  held when that reaches the number required at the time its group was sent.
- **How many are required** (`redis.min_replica_acks`): fixed, or `auto`: 1 with a
  Sentinel URL; otherwise 1 while the master's `INFO replication` reports a connected
  replica (followed on the sync timer, and 1 until the master was first asked).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.redis_wire import Wire

MARKER_KEY = "og:acks"  # a counter: the marker write of `barrier()`

Command = tuple[str | bytes | int | float, ...]


@dataclass(slots=True)
class _Group:
    done: asyncio.Future[tuple[list[Any], bool]]
    commands: list[Command] = field(default_factory=list)


class ReplicaAcks:
    """Writes on their own connection, each group of them closed by one `WAIT`."""

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

    async def write(self, *command: str | bytes | int | float) -> tuple[Any, bool]:
        """The command's reply, and whether the required replicas held it (and every write
        before it) within the timeout. Raises `WireError` when Redis cannot be reached."""
        group = self._gathering
        if group is None:
            group = self._gathering = _Group(asyncio.get_running_loop().create_future())
            # Read the outcome even when every waiting caller was cancelled.
            group.done.add_done_callback(lambda f: f.cancelled() or f.exception())
            task = asyncio.create_task(self._send(group))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        index = len(group.commands)
        group.commands.append(command)
        replies, held = await asyncio.shield(group.done)
        return replies[index], held

    async def barrier(self) -> bool:
        """Whether the required replicas hold every write Redis ran before this call."""
        _, held = await self.write("INCR", MARKER_KEY)
        return held

    async def _send(self, group: _Group) -> None:
        async with self._sending:  # the next group gathers meanwhile
            if self._gathering is group:
                self._gathering = None
            required = self.required
            try:
                replies = await self._wire.call_together(
                    [*group.commands, ("WAIT", required, self._timeout_ms)])
            except asyncio.CancelledError:
                group.done.cancel()
                raise
            except Exception as exc:  # WireError: for every caller of the group
                group.done.set_exception(exc)
                return
            acks = replies[-1]
            held = isinstance(acks, int) and acks >= required
            group.done.set_result((replies[:-1], held))

    def close(self) -> None:
        self._wire.close()
