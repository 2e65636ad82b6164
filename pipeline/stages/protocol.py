"""The contract between a stage's package and the rest of the pipeline.

A stage is one object (a subclass of `Stage`, registered in `pipeline.registry.STAGES`) that owns
everything about one analysis: its job-file section, its part of the plan, what its results
depend on (for reuse), how it reads them back from a previous catalog, its computation (on the
driver, through a `Driver`; on the model actors, through functions that take a `Worker`), and
what it writes into the catalog. run.py, plan.py, reuse.py and the writer only loop over stages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from catalog_schema import ArrayKind
from pipeline.plan import Shard  # noqa: F401 - part of what a stage sees: its shards' type

if TYPE_CHECKING:  # types only
    from catalog_schema import Catalog
    from pipeline.catalog.draft import Draft
    from pipeline.inputs.batches import Preprocess
    from pipeline.job.config import JobConfig
    from pipeline.plan import RunPlan
    from torch import nn

T = TypeVar("T")
LayerInputs = dict[str, dict[str, str]]  # layer (or "*" for the model as a whole) -> input name -> hash
WHOLE_MODEL = "*"  # the layer key of a result computed for the model as a whole


class Worker(Protocol):
    """What a model actor offers the stage functions it runs: the model, the data, shared objects."""

    device: str
    root: Path  # the image folder ([data] images)
    prep: Preprocess

    def model(self) -> nn.Module: ...
    def get(self, shared: Shared) -> Any: ...  # an object the driver shared, fetched once per actor
    def memo(self, key: str, shared: Shared, build: Callable[[Any], T]) -> T: ...  # build(get(shared)), kept per key


Shared = list  # an opaque handle to an object shared with every actor (see Driver.share)
Work = Callable[..., Any]  # a module-level function fn(worker, item, *args), run on an actor


class Driver(Protocol):
    """The runner as a stage sees it: distributed passes over shards, checkpointed in the catalog's work folder."""

    def share(self, value: Any) -> Shared: ...

    def fan_out(self, name: str, desc: str, shards: Sequence[Any], work: Work, args: Callable[[Any], tuple],
                merge: Callable[[T, T], T], empty: T) -> T:
        """work(worker, shard, *args(merged so far)) for every shard (each has .index), merged as they finish;
        each finished partial is checkpointed under the pass `name`, so a resumed run skips it."""

    def map(self, work: Work, items: Sequence[Any], *args: Any) -> list:
        """work(worker, item, *args) for every item, results in item order (not checkpointed)."""

    def load(self, name: str) -> Any | None:
        """The stage's own checkpoint `name` (None before the first save)."""

    def save(self, name: str, value: Any, holds: dict[str, int] | None = None) -> None:
        """Checkpoint `value` as `name`; `holds` says what it holds by kind ('Shapley round(s)': 3), which an
        interrupted run's summary and a resumed run's report count."""

    def timed(self, step: str) -> AbstractContextManager[None]:
        """Count the block's wall time as its own step (and not as the enclosing one's)."""


class Stage:
    """One analysis. Subclasses set the class attributes and override what they need."""

    name: ClassVar[str]  # the job section [stages.<name>] and the name in --stages
    Settings: ClassVar[type]  # the section's frozen dataclass: its fields and defaults are the job keys, its
    # check(key) refuses bad values
    needs: ClassVar[tuple[str, ...]] = ("activations",)  # stages whose results this one reads
    arrays: ClassVar[tuple[ArrayKind, ...]] = ()  # arrays a previous catalog must hold for a layer to be reused
    reasons: ClassVar[dict[str, str]] = {}  # input name -> why a change of it means computing again (see inputs)

    def settings(self, job: JobConfig) -> Any:
        """The section as the job gives it, defaults when it is absent."""
        return job.stages.sections.get(self.name) or self.Settings()

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> Any:
        """The stage's part of the plan (tasks, players, data sets), made on the driver before any work."""
        return None

    def fingerprints(self, part: Any) -> dict[str, str]:
        """Hashes of inputs of the stage's own (a concept data set), recorded beside the model's and the data's."""
        return {}

    def inputs(self, plan: RunPlan) -> LayerInputs:
        """Per layer, the hash of each input its result depends on: unchanged hashes mean it can be reused."""
        raise NotImplementedError

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> Any:
        """The previous catalog's results for `layers` (those not computed), read before anything is written.
        A stage that does not override it is computed in full by every run."""
        return None

    def prior(self, plan: RunPlan, previous: Catalog) -> Any:
        """What a stage computed anew may start from in the previous catalog (a warm start), read before anything is
        written; the run gives it back in `plan.priors[name]`. None: nothing."""
        return None

    def reuses(self) -> bool:
        return type(self).load is not Stage.load

    def run(self, plan: RunPlan, driver: Driver, results: dict[str, Any], reused: Any) -> Any:
        """The stage's result for every layer: computed on the actors where needed, `reused` elsewhere;
        `results` holds the results of the stages before it."""
        raise NotImplementedError

    def write(self, draft: Draft, plan: RunPlan, result: Any) -> None:
        """Add the stage's tables, units columns, arrays and manifest sections to the catalog being written."""
        raise NotImplementedError

