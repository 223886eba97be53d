"""The request pipeline of a proxied route, its steps in `proxy`'s order: maintenance,
rate limit, waiting room (and its tokens), idempotency, and the decisions taken at arrival
on the same concerns (`arrivals`).

May import every wing below: contract, state, backends, edge.
"""
