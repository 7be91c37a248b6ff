"""A FastAPI service: the edge safeguards mounted in one line, a flaky dependency under `@resilient`.

Run it: ``uvicorn examples.fastapi_app:app``, then ``curl -i localhost:8000/quotes/ACME``.
Every response carries ``X-Request-ID``; ``/crash`` answers a bare JSON 500 (the secret in
the exception goes, redacted, to the log only); past 60 requests a minute per client the
answer is ``429`` with ``Retry-After`` and ``RateLimit`` headers.
"""

from __future__ import annotations

import random

from fastapi import FastAPI

from resilient import Retry, Timeout, resilient
from resilient.asgi import ResilientMiddleware

app = FastAPI()
app.add_middleware(ResilientMiddleware, rate_limit="60/minute", max_in_flight=100, timeout=5.0, max_body_size=1_000_000)

RNG = random.Random(11)


# A dependency that drops a third of its connections: retries hide it from the client, and
# each attempt is bounded by the request's deadline the middleware published.
@resilient(timeout=Timeout(total=2.0, attempt=0.5), retry=Retry(attempts=5, initial_delay=0.01, max_delay=0.05))
async def fetch_quote(symbol: str) -> float:
    if RNG.random() < 0.33:
        raise ConnectionError("connection reset by peer")
    return round(100 + len(symbol) * 1.5, 2)


@app.get("/quotes/{symbol}")
async def quote(symbol: str) -> dict[str, object]:
    return {"symbol": symbol, "price": await fetch_quote(symbol)}


@app.get("/crash")
async def crash() -> None:
    raise RuntimeError("database rejected password=hunter2")
