"""The model actor: one copy of the model per GPU (or per `cpus_per_worker` CPUs), running stage functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import ray
import torch
from torch import nn

from pipeline.inputs.batches import Preprocess
from pipeline.inputs.models import build_model

T = TypeVar("T")


class ModelWorker:
    """Holds one copy of the model; `run` calls a stage's function on one shard or item.

    The model is built on the first call from the recipe reference every call carries (the driver
    keeps it alive), so an actor Ray restarts after a crash rebuilds it the same way; shared objects
    (a concept data set, an evaluation set) are fetched once and kept while the driver shares the same one.
    """

    def __init__(self, root: str, prep: Preprocess, threads: int):
        torch.set_num_threads(max(1, threads))  # Ray sets OMP_NUM_THREADS; torch must match the actor's CPUs
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.root, self.prep = Path(root), prep
        self._model: nn.Module | None = None
        self._recipe: list | None = None
        self._shared: dict[str, Any] = {}  # object id -> object
        self._memos: dict[str, tuple[str, Any]] = {}  # key -> (object id it was built from, value)

    def ready(self) -> bool:
        """Answers once the actor's process is up."""
        return True

    def run(self, recipe: list, work: Callable[..., Any], item: Any, args: tuple) -> Any:
        """work(self, item, *args): a stage's module-level function, with this actor as its `Worker`."""
        self._recipe = recipe
        return work(self, item, *args)

    def model(self) -> nn.Module:
        if self._model is None:
            self._model = build_model(ray.get(self._recipe[0])).to(self.device)
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
            if held is not None and hasattr(held[1], "close"):
                held[1].close()
            self._memos[key] = (shared[0].hex(), build(self.get(shared)))
        return self._memos[key][1]
