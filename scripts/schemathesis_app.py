"""`examples/fastapi_app.py` with the middleware's every feature on, or with no middleware at all.

Served by `scripts/schemathesis.sh`: ``RESILIENT_MIDDLEWARE=off`` serves the routes bare, anything
else serves them under `ResilientMiddleware` with request ids, tracing, the access log, a rate
limit (high enough that the run never reaches it: a 429 is not in the schema), an in-flight
limit, a timeout, a body limit, trusted proxies, the deadline header and the error shield.
"""

from __future__ import annotations

import os

from examples.fastapi_app import app
from resilient.asgi import ResilientMiddleware

ALL_ON = {
    "rate_limit": "1000000/minute",
    "max_in_flight": 100,
    "timeout": 5.0,
    "max_body_size": 1_000_000,
    "trusted_proxies": ["127.0.0.0/8"],
    "request_id": True,
    "tracing": True,
    "access_log": True,
    "legacy_ratelimit_headers": True,
    "honour_deadline_header": True,
    "error_shield": True,
}

app.user_middleware.clear()  # the example's own mounting; the stack is built on the first request
if os.environ.get("RESILIENT_MIDDLEWARE", "on") != "off":
    app.add_middleware(ResilientMiddleware, **ALL_ON)

__all__ = ["app"]
