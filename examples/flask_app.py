"""A Flask service: the edge safeguards mounted in one line, a flaky dependency under `@resilient`.

Run it: ``flask --app examples.flask_app run``, then ``curl -i localhost:5000/quotes/ACME``.
Every response carries ``X-Request-ID``; ``/crash`` answers a bare JSON 500 (the secret in
the exception goes, redacted, to the log only); past 60 requests a minute per client the
answer is ``429`` with ``Retry-After`` and ``RateLimit`` headers.
"""

from __future__ import annotations

import random

from flask import Flask

from resilient import Retry, Timeout, resilient
from resilient.wsgi import ResilientWSGIMiddleware

app = Flask(__name__)
# Let unhandled errors reach the middleware's shield (JSON 500 with the request id, error
# logged redacted) instead of Flask's own generic 500 page.
app.config["PROPAGATE_EXCEPTIONS"] = True
app.wsgi_app = ResilientWSGIMiddleware(  # type: ignore[method-assign]
    app.wsgi_app, rate_limit="60/minute", max_in_flight=32, timeout=5.0, max_body_size=1_000_000
)

RNG = random.Random(11)


# A dependency that drops a third of its connections: retries hide it from the client, and
# the whole call is clamped to the request's deadline the middleware published.
@resilient(timeout=Timeout(total=2.0), retry=Retry(attempts=5, initial_delay=0.01, max_delay=0.05))
def fetch_quote(symbol: str) -> float:
    if RNG.random() < 0.33:
        raise ConnectionError("connection reset by peer")
    return round(100 + len(symbol) * 1.5, 2)


@app.get("/quotes/<symbol>")
def quote(symbol: str) -> dict[str, object]:
    return {"symbol": symbol, "price": fetch_quote(symbol)}


@app.get("/crash")
def crash() -> str:
    raise RuntimeError("database rejected password=hunter2")
