"""State shared across requests and processes: one module per concern (`*_store`), each with
its protocol, its in-memory class (the demo: one process), its Redis class and Lua scripts;
`stores.Stores` bundles one of each; `common` has what they share; `redis/` is Redis itself
(the shared connection, the hot path's pipelined wire, the replica acknowledgements).

May import the contract wing only.
"""
