"""A plain Flask app, run under ``resilient run -- waitress-serve`` / ``gunicorn`` by the tests."""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def home() -> str:
    """Answer every request with "ok"."""
    return "ok"
