"""Headers every answer carries, so that a browser treats it as data and nothing else.

The gateway serves JSON only: nothing of it may be sniffed as HTML, framed,
or leak the page's address onward. `Server` names the gateway without the
versions of what it is built on.
"""

from __future__ import annotations

from gateway.contract.settings import SecurityHeadersSettings


def security_headers(settings: SecurityHeadersSettings) -> dict[str, str]:
    headers = {
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
        "Referrer-Policy": "no-referrer",
        "Server": "order-gateway",
    }
    if settings.hsts_max_age_s:
        headers["Strict-Transport-Security"] = f"max-age={settings.hsts_max_age_s}"
    return headers
