"""Pure logic: no socket, no process; fake clocks and in-memory stores where time or state
is needed."""
