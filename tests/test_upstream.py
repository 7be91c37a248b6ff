"""FaultyUpstream serves every fault shape, counts what it received and always stops."""

from __future__ import annotations

import email.utils
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from resilient.testing import Fault, FaultyUpstream, ReceivedRequest

BROKEN = (httpx.ReadError, httpx.RemoteProtocolError)


@pytest.fixture
def plain() -> Iterator[httpx.Client]:
    """A plain httpx client (no resilient), closed after the test."""
    with httpx.Client(timeout=5.0) as client:
        yield client


def test_ok_answers_with_status_body_and_headers(plain: httpx.Client) -> None:
    """`Fault.ok` answers at once with the given body, status and headers."""
    with FaultyUpstream([Fault.ok("hello", status=201, headers={"X-Test": "1"})]) as up:
        response = plain.get(up.url)
    assert (response.status_code, response.text, response.headers["x-test"]) == (201, "hello", "1")


def test_status_sends_retry_after_in_seconds(plain: httpx.Client) -> None:
    """`Fault.status` answers with the error status and a delta-seconds Retry-After."""
    with FaultyUpstream([Fault.status(503, retry_after="1"), Fault.status(500)]) as up:
        first, second = plain.get(up.url), plain.get(up.url)
    assert (first.status_code, first.headers["retry-after"]) == (503, "1")
    assert second.status_code == 500
    assert "retry-after" not in second.headers


def test_status_sends_retry_after_as_http_date(plain: httpx.Client) -> None:
    """A timedelta Retry-After is sent as an HTTP-date that far from the moment of answering."""
    with FaultyUpstream([Fault.status(429, retry_after=timedelta(seconds=30))]) as up:
        before = time.time()
        response = plain.get(up.url)
    sent = email.utils.parsedate_to_datetime(response.headers["retry-after"]).timestamp()
    assert response.status_code == 429
    assert before + 28 <= sent <= time.time() + 30


def test_status_accepts_an_absolute_date(plain: httpx.Client) -> None:
    """A datetime Retry-After is sent as that HTTP-date."""
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    with FaultyUpstream([Fault.status(503, retry_after=when)]) as up:
        response = plain.get(up.url)
    assert response.headers["retry-after"] == "Wed, 02 Jan 2030 03:04:05 GMT"


def test_reset_before_answering_breaks_the_request(plain: httpx.Client) -> None:
    """`Fault.reset()` closes the connection with a RST before any response byte."""
    with FaultyUpstream([Fault.reset()]) as up:
        with pytest.raises(BROKEN):
            plain.get(up.url)
        assert up.requests == 1


def test_reset_mid_response_breaks_the_body_after_the_head(plain: httpx.Client) -> None:
    """`Fault.reset(mid_response=True)` sends a 200 head and half the body, then resets."""
    with FaultyUpstream([Fault.reset(mid_response=True)]) as up, plain.stream("GET", up.url) as response:
        assert response.status_code == 200
        with pytest.raises(BROKEN):
            response.read()


def test_hang_holds_the_answer_then_closes(plain: httpx.Client) -> None:
    """`Fault.hang` says nothing for its duration, then closes the connection."""
    with FaultyUpstream([Fault.hang(0.2)]) as up:
        started = time.monotonic()
        with pytest.raises(httpx.RemoteProtocolError):
            plain.get(up.url)
    assert time.monotonic() - started >= 0.2


def test_hang_times_out_a_client_with_a_shorter_timeout() -> None:
    """A hang longer than the client's read timeout shows up as a ReadTimeout."""
    with (
        FaultyUpstream([Fault.hang(30)]) as up,
        httpx.Client(timeout=0.1) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        client.get(up.url)


def test_slow_body_sends_the_head_first_then_chunks_apart(plain: httpx.Client) -> None:
    """`Fault.slow_body` sends the head at once and each chunk `delay` seconds apart."""
    with FaultyUpstream([Fault.slow_body([b"ab", b"cd", b"ef"], 0.2)]) as up:
        started = time.monotonic()
        with plain.stream("GET", up.url) as response:
            head_after = time.monotonic() - started
            body = response.read()
        total = time.monotonic() - started
    assert body == b"abcdef"
    assert head_after < 0.2  # before the first chunk's delay: generous on a loaded machine
    assert total >= 0.6


def test_delay_waits_then_does_the_inner_fault(plain: httpx.Client) -> None:
    """`Fault.delay` waits before doing `then` (here a 502)."""
    with FaultyUpstream([Fault.delay(0.15, then=Fault.status(502))]) as up:
        started = time.monotonic()
        response = plain.get(up.url)
    assert response.status_code == 502
    assert time.monotonic() - started >= 0.15


def test_delay_draws_from_a_range(plain: httpx.Client) -> None:
    """A (low, high) delay is drawn uniformly in that range (the latency distribution)."""
    with FaultyUpstream(default=Fault.delay((0.01, 0.03)), seed=3) as up:
        durations = []
        for _ in range(5):
            started = time.monotonic()
            plain.get(up.url)
            durations.append(time.monotonic() - started)
    assert min(durations) >= 0.01


def test_script_is_used_in_order_then_the_default(plain: httpx.Client) -> None:
    """Scripted faults are consumed one per request, then the default applies."""
    with FaultyUpstream([Fault.status(500), Fault.status(502)], default=Fault.ok("fine")) as up:
        statuses = [plain.get(up.url).status_code for _ in range(4)]
    assert statuses == [500, 502, 200, 200]


def test_callable_script_chooses_by_request(plain: httpx.Client) -> None:
    """A callable script picks the fault from the request (here: by path)."""

    def by_path(request: ReceivedRequest) -> Fault:
        return Fault.status(503) if request.path.startswith("/down") else Fault.ok()

    with FaultyUpstream(by_path) as up:
        assert plain.get(f"{up.url}/down").status_code == 503
        assert plain.get(f"{up.url}/up").status_code == 200


def test_mix_draws_faults_by_weight_reproducibly(plain: httpx.Client) -> None:
    """`FaultyUpstream.mix` draws faults by weight; the same seed gives the same sequence."""
    runs = []
    for _ in range(2):
        with FaultyUpstream.mix({Fault.ok(): 0.7, Fault.status(503): 0.3}, seed=1) as up:
            runs.append([plain.get(up.url).status_code for _ in range(200)])
    assert runs[0] == runs[1]
    assert 0.2 <= runs[0].count(503) / 200 <= 0.4


def test_mix_rejects_weights_without_a_positive_sum() -> None:
    """Weights must be non-negative with a positive sum."""
    with pytest.raises(ValueError, match="weights"):
        FaultyUpstream.mix({Fault.ok(): 0})


def test_counts_and_records_every_request(plain: httpx.Client) -> None:
    """Requests are counted in total, per path and per method, with headers and body recorded."""
    with FaultyUpstream() as up:
        plain.get(f"{up.url}/a", headers={"X-Trace": "t1"})
        plain.post(f"{up.url}/b", content=b"payload")
        plain.post(f"{up.url}/b", content=iter([b"chunk", b"ed"]))  # chunked request body
    assert up.requests == 3
    assert (up.by_path["/a"], up.by_path["/b"]) == (1, 2)
    assert (up.by_method["GET"], up.by_method["POST"]) == (1, 2)
    assert up.received[0].headers["x-trace"] == "t1"
    assert [r.body for r in up.received] == [b"", b"payload", b"chunked"]


def test_keep_alive_serves_many_requests_on_one_connection(plain: httpx.Client) -> None:
    """A keep-alive client sends all its requests over one connection."""
    with FaultyUpstream() as up:
        for _ in range(10):
            plain.get(up.url)
    assert (up.requests, up.connections) == (10, 1)


def test_stops_by_itself_at_max_requests(plain: httpx.Client) -> None:
    """After `max_requests` the server stops by itself: later connections are refused."""
    with FaultyUpstream(max_requests=2) as up:
        plain.get(up.url)
        plain.get(up.url)
        assert up.wait_stopped(5)
        assert not up.running
        with pytest.raises(httpx.ConnectError):
            plain.get(up.url)
    assert up.requests == 2


def test_stops_by_itself_after_max_lifetime() -> None:
    """After `max_lifetime` seconds the server stops by itself."""
    with FaultyUpstream(max_lifetime=0.2) as up:
        assert up.wait_stopped(5)


def test_stop_wakes_a_hung_request_and_closes_its_connection() -> None:
    """Stopping the server while a request hangs ends that request at once."""
    errors: list[BaseException] = []

    def fetch(url: str) -> None:
        with httpx.Client(timeout=30.0) as client:
            try:
                client.get(url)
            except httpx.HTTPError as error:
                errors.append(error)

    up = FaultyUpstream(default=Fault.hang(600)).start()
    worker = threading.Thread(target=fetch, args=(up.url,))
    worker.start()
    assert up.wait_requests(1, timeout=5)
    started = time.monotonic()
    up.stop()
    worker.join(timeout=5)
    assert not worker.is_alive()
    assert time.monotonic() - started < 2
    assert len(errors) == 1


async def test_async_context_manager_serves_an_async_client() -> None:
    """`async with FaultyUpstream()` works for async tests, without blocking the loop."""
    async with FaultyUpstream([Fault.status(503)]) as up, httpx.AsyncClient() as client:
        responses = [await client.get(up.url) for _ in range(2)]
    assert [r.status_code for r in responses] == [503, 200]
    assert not up.running


def test_faults_reject_bad_values() -> None:
    """Fault constructors validate status codes and durations, naming the field."""
    with pytest.raises(ValueError, match=r"fault\.code"):
        Fault.status(700)
    with pytest.raises(ValueError, match=r"fault\.seconds"):
        Fault.hang(-1)
    with pytest.raises(ValueError, match="max_requests"):
        FaultyUpstream(max_requests=0)


def test_start_twice_is_an_error() -> None:
    """An upstream is started once; a second start says so."""
    with FaultyUpstream() as up, pytest.raises(RuntimeError, match="only once"):
        up.start()
