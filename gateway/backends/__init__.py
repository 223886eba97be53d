"""Calling the backends: the HTTP/1.1 client of our own (`http_wire`) on one timer wheel,
the upstream boundary where every failure is translated (`upstream`), breakers and their
runtime control, retries and their budget, injected faults, rolling counts, and the
stale answers kept for when a backend fails.

May import the contract and state wings.
"""
