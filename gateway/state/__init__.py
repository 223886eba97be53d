"""State shared across requests and processes: the store protocols with their in-memory
implementations (`store`), the same on Redis (`redis_store`), the pipelined Redis client
of the hot path (`redis_wire`) and the replica acknowledgements (`replica_acks`).

May import the contract wing only.
"""
