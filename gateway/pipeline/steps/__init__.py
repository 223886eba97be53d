"""The steps of a proxied request, one module each, in the order `proxy.py` chains them:
`admit`, `identify`, `validate`, then `maintenance`, `rate_limit`, `waiting_room`, and last
`idempotency` (a keyed submission) or `send`."""
