"""The contract: what the gateway promises and is told, as values and pure functions.

The error catalog and its rendering, the route table and schemas, the typed settings,
header names, the clock, client identity, validation of paths, queries and bodies, the
request deadline, forwarded-header checks, the language of answers, privacy scrubbing,
and the metrics and access log every wing reports to. Imports nothing of the gateway
outside this wing.
"""
