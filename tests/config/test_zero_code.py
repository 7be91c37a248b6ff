"""End to end: unmodified programs under ``resilient run`` are protected from the file alone.

Each server binds 127.0.0.1 on a free port, is waited for by polling the port (bounded),
and is always killed at the end of its test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from resilient.testing import Fault, FaultyUpstream
from tests.config.conftest import Writer

APPS = Path(__file__).resolve().parent.parent / "zero_code"
BIN = Path(sys.executable).parent
STARTUP_BOUND = 60.0
LIMITED = '[middleware]\nrate_limit = "3/minute"\n'


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RESILIENT_")}
    env["PYTHONPATH"] = str(APPS)  # the program's own path entries are kept behind ours
    return {**env, **extra}


def _wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_BOUND
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet; bounded by STARTUP_BOUND
        else:
            return
    pytest.fail(f"nothing listened on port {port} within {STARTUP_BOUND} s")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """Start ``resilient run -- COMMAND`` in the test's directory; the process is always killed."""
    started: list[subprocess.Popen[bytes]] = []

    def _serve(command: list[str], port: int, **env: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(  # noqa: S603 - our own command line
            [sys.executable, "-m", "resilient", "run", "--", *command],
            cwd=tmp_path,
            env=_env(**env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        _wait_for_port(port, process)
        return process

    yield _serve
    for process in started:
        process.kill()
        process.wait(timeout=30)
        assert process.stderr is not None
        process.stderr.close()


def _statuses(port: int, count: int) -> list[tuple[int, str | None]]:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        return [
            (response.status_code, response.headers.get("x-request-id"))
            for response in (client.get("/", headers={"X-Request-ID": f"req-{n}"}) for n in range(count))
        ]


def _assert_limited(results: list[tuple[int, str | None]]) -> None:
    assert [status for status, _ in results] == [200, 200, 200, 429, 429]
    assert [request_id for _, request_id in results] == [f"req-{n}" for n in range(5)]


@pytest.mark.slow
def test_a_starlette_app_under_uvicorn_is_rate_limited_from_the_file(write: Writer, serve) -> None:  # type: ignore[no-untyped-def]
    """``resilient run -- python -m uvicorn app:app``: 429 past the file's limit, request ids echoed."""
    write("resilient.toml", LIMITED)
    port = _free_port()
    serve([sys.executable, "-m", "uvicorn", "starlette_app:app", "--host", "127.0.0.1", "--port", str(port)], port)
    _assert_limited(_statuses(port, 5))


@pytest.mark.slow
def test_a_flask_app_under_waitress_is_rate_limited_from_the_file(write: Writer, serve) -> None:  # type: ignore[no-untyped-def]
    """``resilient run -- waitress-serve flask_app:app``: the same limit, from the same file."""
    write("resilient.toml", LIMITED)
    port = _free_port()
    serve([str(BIN / "waitress-serve"), "--listen", f"127.0.0.1:{port}", "flask_app:app"], port)
    _assert_limited(_statuses(port, 5))


@pytest.mark.slow
def test_a_flask_app_under_gunicorn_is_rate_limited_from_the_file(write: Writer, serve) -> None:  # type: ignore[no-untyped-def]
    """``resilient run -- gunicorn flask_app:app``: the same limit, from the same file."""
    write("resilient.toml", LIMITED)
    port = _free_port()
    serve([str(BIN / "gunicorn"), "--bind", f"127.0.0.1:{port}", "--workers", "1", "flask_app:app"], port)
    _assert_limited(_statuses(port, 5))


@pytest.mark.slow
def test_disabled_leaves_the_app_unprotected(write: Writer, serve) -> None:  # type: ignore[no-untyped-def]
    """With RESILIENT_DISABLED=1 nothing is patched: no limit, no request id."""
    write("resilient.toml", LIMITED)
    port = _free_port()
    serve([str(BIN / "waitress-serve"), "--listen", f"127.0.0.1:{port}", "flask_app:app"], port, RESILIENT_DISABLED="1")
    assert _statuses(port, 5) == [(200, None)] * 5


def _fetch(tmp_path: Path, *urls: str, **env: str) -> list[str]:
    done = subprocess.run(  # noqa: S603 - our own command line
        [str(BIN / "resilient-run"), "--", sys.executable, str(APPS / "fetch.py"), *urls],
        cwd=tmp_path,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=STARTUP_BOUND,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.slow
def test_a_script_s_httpx_client_gets_its_retries_from_the_file(write: Writer, tmp_path: Path) -> None:
    """Two 503s then 200: the script sees 200 after three requests; disabled, it sees the first 503."""
    write("resilient.toml", "[httpx]\nretry = { attempts = 3, initial_delay = 0.0, max_delay = 0.0 }\n")
    script = [Fault.status(503), Fault.status(503)]
    with FaultyUpstream(script, default=Fault.ok()) as upstream:
        assert _fetch(tmp_path, upstream.url) == ["200"]
        assert upstream.requests == 3
    with FaultyUpstream(script, default=Fault.ok()) as upstream:
        assert _fetch(tmp_path, upstream.url, RESILIENT_DISABLED="1") == ["503"]
        assert upstream.requests == 1


@pytest.mark.slow
def test_a_script_s_httpx_client_gets_its_breaker_from_the_file(write: Writer, tmp_path: Path) -> None:
    """With retries off and a breaker opening after 2 failures, calls 3 and 4 never reach the upstream."""
    write("resilient.toml", "[httpx]\nretry = false\nbreaker = { failure_threshold = 2, minimum_calls = 1 }\n")
    with FaultyUpstream(default=Fault.status(500)) as upstream:
        outcomes = _fetch(tmp_path, *[upstream.url] * 4)
        assert outcomes[:2] == ["500", "500"]
        assert outcomes[2:] == ["HTTPCircuitOpenError", "HTTPCircuitOpenError"]  # also an httpx.TransportError
        assert upstream.requests == 2
