"""A plain Starlette app, run under ``resilient run -- uvicorn starlette_app:app`` by the tests."""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def home(request: Request) -> PlainTextResponse:
    """Answer every request with "ok"."""
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/", home)])
