"""Model actors kept between runs, for a long-lived process that asks for it (a scheduler, a notebook, the tests).

Starting an actor means a new Python process importing torch: seconds per run. Inside `keep_workers()`,
the actors of a run that finished are kept and the next run on the same Ray with the same actor shape
(CPUs, GPUs) takes them; actors of another shape are stopped first, since they hold the resources the new
ones need. Actors of a run that failed or was interrupted are never kept (they may still be busy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import ray

from pipeline.runner.task_pool import get_all

Shape = tuple[float, float]  # (CPUs, GPUs) of each actor


@dataclass
class _Kept:
    keeping: bool = False
    shape: Shape | None = None
    actors: list = field(default_factory=list)


_kept = _Kept()


@contextmanager
def keep_workers() -> Iterator[None]:
    """Within this block, runs on an already started Ray hand their model actors on to the next run."""
    _kept.keeping = True
    try:
        yield
    finally:
        _kept.keeping = False
        stop_kept()


def take(shape: Shape, count: int) -> list:
    """Up to `count` kept actors of this shape that still answer; every other kept actor is stopped."""
    chosen = _kept.actors[:count] if _kept.shape == shape else []
    stop_kept(but=chosen)
    alive = []
    for actor in chosen:
        try:
            get_all([actor.ready.remote()], timeout=30)
            alive.append(actor)
        except Exception:  # lost since: a new one takes its place
            ray.kill(actor)
    return alive


def keep(shape: Shape, actors: list) -> None:
    """Hand a finished run's actors on, when asked to (else they end with their handles)."""
    if _kept.keeping and ray.is_initialized():
        _kept.shape, _kept.actors = shape, list(actors)


def stop_kept(but: list = ()) -> None:
    """Stop the kept actors (except `but`); with Ray already shut down, just forget them."""
    stop([actor for actor in _kept.actors if not any(actor is a for a in but)])
    _kept.shape, _kept.actors = None, []


def stop(actors: list) -> None:
    """Kill the actors now, whatever task they are running (Ray restarts none of them)."""
    if ray.is_initialized():
        for actor in actors:
            ray.kill(actor, no_restart=True)
