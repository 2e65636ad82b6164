"""Sending work to the model actors so that a lost node costs only the tasks it was running.

Ray restarts an actor whose node died (max_restarts) and retries its queued tasks (max_task_retries),
but a task's result can still be lost with the node before the driver fetched it, and an actor that
ran out of restarts fails every call. Here each item is resubmitted (to a live actor) until it has
a result; errors raised by the stage code itself are not retried.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray import exceptions as rx

from pipeline.errors import UserError

LOST = (rx.RayActorError, rx.ObjectLostError, rx.WorkerCrashedError, rx.NodeDiedError)
ATTEMPTS = 5  # per item: a node lost several times over during one item's run is a cluster problem
POLL_SECONDS = 0.2  # Ray's wait lets a signal's handler run only between calls: never block longer than this


def wait_any(refs: list) -> ray.ObjectRef:
    """The first of `refs` to finish. Polled, so that SIGINT or SIGTERM stops the driver at once: a blocking
    `ray.wait` runs a Python signal handler only when a task finishes (pipeline.interrupts)."""
    while True:
        ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_SECONDS)
        if ready:
            return ready[0]


def get_all(refs: list, timeout: float | None = None) -> list:
    """ray.get(refs), waited for as `wait_any` does; GetTimeoutError after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
        if pending and deadline is not None and time.monotonic() > deadline:
            raise rx.GetTimeoutError(f"{len(pending)} of {len(refs)} results not ready after {timeout} s")
    return ray.get(list(refs))


def completed(actors: list, items: list, submit: Callable[[Any, Any], ray.ObjectRef]) -> Iterator[tuple[int, Any]]:
    """Yield (position in `items`, result) as results arrive; `submit(actor, item)` starts one task."""
    todo = deque(range(len(items)))
    idle, running = list(actors), {}
    attempts = [0] * len(items)
    while todo or running:
        while todo and idle:
            i = todo.popleft()
            actor = idle.pop(0)
            running[submit(actor, items[i])] = (i, actor)
        if not running:
            raise UserError("every model worker died (their nodes were lost more often than Ray restarts an actor); "
                            "the finished shards are checkpointed: run the same command again.")
        ref = wait_any(list(running))
        i, actor = running.pop(ref)
        try:
            value = ray.get(ref)
        except LOST as exc:
            attempts[i] += 1
            if attempts[i] >= ATTEMPTS:
                raise
            todo.appendleft(i)
            if not isinstance(exc, rx.ActorDiedError):  # a restarted or restarting actor takes work again
                idle.append(actor)
            continue
        idle.append(actor)
        yield i, value


def in_order(actors: list, items: list, submit: Callable[[Any, Any], ray.ObjectRef]) -> list:
    """Every item's result, in the order of `items` (for merges that must not depend on timing)."""
    out: list = [None] * len(items)
    for i, value in completed(actors, items, submit):
        out[i] = value
    return out
