"""Per-key rate limiter under key churn at a full table: cost per new key, flat in the table size.

An attacker rotating client keys makes every request a new key. Once the table holds
`max_keys` keys, each new key must evict one; this prints the cost of a call with a new
key at a full table of 1,000, 100,000 and 1,000,000 keys (keys expiring as fast as new
ones arrive, the churn that made the old sweep read the whole table per call), and the
memory per key of each algorithm.

    python -m benchmarks.limiter_churn [--sizes 1000,100000,1000000] [--calls 200000]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from resilient import RateLimit
from resilient._strategies.ratelimit import ALGORITHMS, LimiterRuntime


def churn_cost(size: int, calls: int, algorithm: str = "moving-window") -> float:
    """Seconds per call with a new key at a full table of `size` keys."""
    limiter = LimiterRuntime(RateLimit("100/minute", algorithm=algorithm, key=str, max_keys=size))  # type: ignore[arg-type]
    step = 60.0 / size  # the table's keys expire one by one as new ones arrive
    now = 1_000.0
    for index in range(size):
        limiter.try_acquire(f"fill-{index}", now)
        now += step
    keys = [(f"new-{index}", now + index * step) for index in range(calls)]
    gc.collect()
    started = time.perf_counter()
    for key, at in keys:
        limiter.try_acquire(key, at)
    elapsed = time.perf_counter() - started
    if limiter.key_count > size:
        raise RuntimeError(f"the key table grew past max_keys: {limiter.key_count} > {size}")
    return elapsed / calls


def bytes_per_key(algorithm: str, hits: int, keys: int = 20_000) -> float:
    """Traced memory per key holding `hits` admitted calls ("100/minute")."""
    limiter = LimiterRuntime(RateLimit("100/minute", algorithm=algorithm, key=str, max_keys=keys))  # type: ignore[arg-type]
    names = [f"k{index}" for index in range(keys)]
    tracemalloc.start()
    for hit in range(hits):
        for name in names:
            limiter.try_acquire(name, 1_000.0 + hit * 0.01)
    used, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return used / keys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--calls", type=int, default=200_000)
    options = parser.parse_args()
    sizes = [int(size) for size in options.sizes.split(",")]
    costs = {size: churn_cost(size, options.calls) for size in sizes}
    base = costs[sizes[0]]
    print(f"new key at a full table, moving-window '100/minute', {options.calls:,} calls each:")
    for size, cost in costs.items():
        print(f"  {size:>9,} keys: {cost * 1e9:7.0f} ns/call  ({cost / base:.2f}x the {sizes[0]:,}-key table)")
    print("memory per key ('100/minute'; the key string and its table slot included):")
    for algorithm in ALGORITHMS:
        row = ", ".join(f"{hits} hit(s) {bytes_per_key(algorithm, hits):,.0f} B" for hits in (1, 10, 100))
        print(f"  {algorithm:>14}: {row}")


if __name__ == "__main__":
    main()
