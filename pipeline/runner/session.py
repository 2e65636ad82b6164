"""Connecting to Ray: a cluster's address, or an embedded local Ray for this process."""

from __future__ import annotations

from collections.abc import Iterator
import os
from contextlib import contextmanager

import ray

from pipeline.interrupts import stop_on_signals
from pipeline.runner.pool import stop_kept


def quiet_threads() -> None:
    """OpenMP threads that sleep when idle, in the Ray processes started from here (they inherit the
    environment), unless the user chose otherwise. A model worker's torch threads share the cores with
    its decoding thread and the driver; GNU OpenMP's default spin-wait then slowed the dissection stage
    by 15% on 2 cores, and OMP_WAIT_POLICY=ACTIVE by 4-25x (tests/benchmarks/bench_netdissect.py)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connect to `address` (a cluster), else start an embedded local Ray; reuse one already started."""
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, logging_level="ERROR")
    else:
        quiet_threads()
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    try:
        with stop_on_signals():  # again: ray.init replaced the handlers (its SIGTERM one dumps stacks)
            yield
    finally:
        stop_kept()  # they end with this Ray
        ray.shutdown()
