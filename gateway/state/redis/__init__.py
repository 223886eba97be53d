"""Redis itself: the connection the Redis stores share (`connection`), the pipelined wire
of the hot path (`wire`) and the replica acknowledgements (`replica_acks`). The only code
that imports redis or hiredis, with `contract/redis_sentinel` for the URL's syntax."""
