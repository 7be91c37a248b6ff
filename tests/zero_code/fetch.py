"""A script that GETs each URL of its arguments with a plain ``httpx.Client`` and prints the outcome."""

import sys

import httpx

with httpx.Client() as client:
    for url in sys.argv[1:]:
        try:
            print(client.get(url).status_code)  # noqa: T201 - the output is what the test reads
        except Exception as exc:
            print(type(exc).__name__)  # noqa: T201
