"""The model actor: one copy of the model per GPU (or per `cpus_per_worker` CPUs), running stage functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch
from torch import nn

from pipeline.inputs.batches import Preprocess
from pipeline.inputs.models import ModelRecipe, build_model

T = TypeVar("T")


@dataclass(frozen=True)
class RunSetup:
    """What every call of one run carries (by reference): how to build the model and read the images."""

    recipe: ModelRecipe
    root: str
    prep: Preprocess
    threads: int = 0  # torch's threads in every actor ([ray] cpus_per_worker); 0: as the actor started
    parts: tuple = ()  # what earlier stages attach to the model (Stage.model_parts: objects with install(model))


class ModelWorker:
    """Holds one copy of the model; `run` calls a stage's function on one shard or item.

    The model is built on the first call from the run's setup reference every call carries (the driver
    keeps it alive), so an actor Ray restarts after a crash rebuilds it the same way, and an actor kept
    for a later run (runner.pool) starts that run afresh; shared objects (a concept data set, an
    evaluation set) are fetched once and kept while the driver shares the same one.
    """

    def __init__(self, threads: int):
        torch.set_num_threads(max(1, threads))  # Ray sets OMP_NUM_THREADS; torch must match the actor's CPUs
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.root: Path | None = None  # the run's image folder and preprocessing, set by its first call
        self.prep: Preprocess | None = None
        self._run_key: str | None = None
        self._recipe: ModelRecipe | None = None
        self._parts: tuple = ()
        self._model: nn.Module | None = None
        self._shared: dict[str, Any] = {}  # object id -> object
        self._memos: dict[str, tuple[str, Any]] = {}  # key -> (object id it was built from, value)

    def ready(self) -> bool:
        """Answers once the actor's process is up."""
        return True

    def run(self, setup: list, work: Callable[..., Any], item: Any, args: tuple) -> Any:
        """work(self, item, *args): a stage's module-level function, with this actor as its `Worker`."""
        if setup[0].hex() != self._run_key:
            self._start_run(setup[0].hex(), ray.get(setup[0]))
        return work(self, item, *args)

    def _start_run(self, key: str, setup: RunSetup) -> None:
        if setup.threads:  # the same in every actor of the run, however many share the CPUs: a convolution's
            torch.set_num_threads(setup.threads)  # kernel, so its rounding, can change with torch's thread count
        for _, value in self._memos.values():
            _close(value)
        self._memos, self._shared, self._model = {}, {}, None
        self._run_key, self._recipe, self._parts = key, setup.recipe, setup.parts
        self.root, self.prep = Path(setup.root), setup.prep

    def model(self) -> nn.Module:
        if self._model is None:
            model = build_model(self._recipe)
            for part in self._parts:
                part.install(model)
            self._model = model.to(self.device)
        return self._model

    def get(self, shared: list) -> Any:
        key = shared[0].hex()
        if key not in self._shared:
            self._shared = {key: ray.get(shared[0])}  # one at a time: the driver shares one per pass
        return self._shared[key]

    def memo(self, key: str, shared: list, build: Callable[[Any], T]) -> T:
        """build(the shared object), kept under `key` until another object is shared for it; a replaced
        value with a close() method (an evaluator holding hooks on the model) is closed."""
        held = self._memos.get(key)
        if held is None or held[0] != shared[0].hex():
            if held is not None:
                _close(held[1])
            self._memos[key] = (shared[0].hex(), build(self.get(shared)))
        return self._memos[key][1]


def _close(value: Any) -> None:
    """Close a memo that holds something (an evaluator's hooks on the model)."""
    if hasattr(value, "close"):
        value.close()
