"""Connecting to Ray: a cluster's address, or an embedded local Ray for this process."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import ray

from pipeline.interrupts import stop_on_signals
from pipeline.runner.pool import stop_kept


@contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Connect to `address` (a cluster), else start an embedded local Ray; reuse one already started."""
    if ray.is_initialized():
        yield
        return
    if address:
        ray.init(address=address, logging_level="ERROR")
    else:
        ray.init(address="local", include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    try:
        with stop_on_signals():  # again: ray.init replaced the handlers (its SIGTERM one dumps stacks)
            yield
    finally:
        stop_kept()  # they end with this Ray
        ray.shutdown()
