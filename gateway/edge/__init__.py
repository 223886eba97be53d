"""The edge: one client connection and what every answer passes on its way out.

The listener and connection handler over aiohttp (`connections`, the only module that
touches aiohttp's internals), the middleware with the access log (`edge`), API keys and
the throttle of failed secret checks (`auth`), CORS, security headers, and admission
control (`admission`). Decisions at arrival reach the connection through the protocol it
declares (`connections.AdmissionAtArrival`), implemented by the pipeline wing.

May import the contract, state and backends wings.
"""
