"""Fixtures every shared-storage test file uses: a private key prefix, its URI, a plain client."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from resilient._storage.store import close_stores
from tests._redis_workers import delete_prefix, with_prefix


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards, nobody else's."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    yield name
    close_stores()
    delete_prefix(redis_url, name)


@pytest.fixture
def uri(redis_url: str, prefix: str) -> str:
    """The shared storage URI of this test."""
    return with_prefix(redis_url, prefix)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client to look at (and age) what the library stored."""
    plain = redis.Redis.from_url(redis_url)
    yield plain
    plain.close()
