"""The contract between a stage's package and the rest of the pipeline.

A stage is one object (a subclass of `Stage`, registered in `pipeline.registry.STAGES`) that owns
everything about one analysis: its job-file section, its part of the plan, what its results
depend on (for reuse), how it reads them back from a previous catalog, its computation (on the
driver, through a `Driver`; on the model actors, through functions that take a `Worker`), and
what it writes into the catalog. run.py, planning.py, reuse.py and the writer only loop over stages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from catalog_schema import ArrayKind

if TYPE_CHECKING:  # types only
    from catalog_schema import Catalog
    from pipeline.catalog.draft import Draft, ManifestPart
    from pipeline.inputs.batches import Preprocess
    from pipeline.inputs.models import LayerInfo
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


SettingsT = TypeVar("SettingsT")
PartT = TypeVar("PartT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class Context(Generic[SettingsT, PartT, ResultT]):
    """What a stage's `run` and `write` see of the run: the generic plan, its own settings and part of the plan,
    what it read back from the previous catalog, and the results of the stages it `needs`."""

    plan: RunPlan
    settings: SettingsT
    part: PartT
    reused: ResultT | None = None  # Stage.load's result: the layers a previous catalog's results still hold
    prior: Any = None  # Stage.prior's result: what computing anew may start from
    upstream: Mapping[type, Any] = field(default_factory=dict)  # stage class -> its result, for the stages in `needs`
    added: Mapping[str, Any] = field(default_factory=dict)  # layer -> what an earlier stage attached to the model for
    # it (Stage.model_parts: a dictionary's FeatureLayer)

    def result_of(self, stage: type[Stage[Any, Any, T]]) -> T:
        """The result of a stage this one declares in `needs`."""
        if stage not in self.upstream:
            raise KeyError(f"{stage.name} is not among the stages this one needs")
        return self.upstream[stage]


class Stage(Generic[SettingsT, PartT, ResultT]):
    """One analysis. Subclasses set the class attributes and override what they need."""

    name: ClassVar[str]  # the job section [stages.<name>] and the name in --stages
    Settings: ClassVar[type]  # the section's frozen dataclass: its fields and defaults are the job keys, its
    # check(key) refuses bad values
    needs: ClassVar[tuple[type[Stage], ...]] = ()  # stages that run first; `run` reads their results (Context.result_of)
    arrays: ClassVar[tuple[ArrayKind, ...]] = ()  # arrays a previous catalog must hold for a layer to be reused
    reasons: ClassVar[dict[str, str]] = {}  # input name -> why a change of it means computing again (see inputs)
    generators: ClassVar[bool] = False  # runs on a generator job ([latents]); else refused with `not_for_generators`
    not_for_generators: ClassVar[str] = "it reads a classifier"

    def settings(self, job: JobConfig) -> SettingsT:
        """The section as the job gives it, defaults when it is absent."""
        return job.stages.sections.get(self.name) or self.Settings()

    def part(self, plan: RunPlan) -> PartT:
        """The stage's part of the plan (what `plan` returned)."""
        return plan.parts[self.name]

    def added_layers(self, job: JobConfig, model: nn.Module, layers: list[LayerInfo]) -> dict[str, LayerInfo]:
        """Layers this stage adds to the model for the stages after it (a dictionary's features), by the surveyed layer
        each reads: the run catalogs each right after that layer. Their parts come from `model_parts`."""
        return {}

    def model_parts(self, result: ResultT) -> dict[str, Any]:
        """Per added layer, what the model actors attach to their model once this stage has run (an object with
        `install(model)`); the later stages' contexts hold them as `added`."""
        return {}

    def plan(self, plan: RunPlan, model: nn.Module, survey: Any) -> PartT:
        """The stage's part of the plan (tasks, players, data sets), made on the driver before any work."""
        return None

    def fingerprints(self, part: PartT) -> dict[str, str]:
        """Hashes of inputs of the stage's own (a concept data set), recorded beside the model's and the data's."""
        return {}

    def inputs(self, plan: RunPlan) -> LayerInputs:
        """Per layer, the hash of each input its result depends on: unchanged hashes mean it can be reused."""
        raise NotImplementedError

    def load(self, plan: RunPlan, previous: Catalog, layers: list[str]) -> ResultT | None:
        """The previous catalog's results for `layers` (those not computed), read before anything is written.
        A stage that does not override it is computed in full by every run."""
        return None

    def prior(self, plan: RunPlan, previous: Catalog) -> Any:
        """What a stage computed anew may start from in the previous catalog (a warm start), read before anything is
        written; the run gives it back as `Context.prior`. None: nothing."""
        return None

    def reuses(self) -> bool:
        return type(self).load is not Stage.load

    def run(self, ctx: Context[SettingsT, PartT, ResultT], driver: Driver) -> ResultT:
        """The stage's result for every layer: computed on the actors where needed, `ctx.reused` elsewhere."""
        raise NotImplementedError

    def write(self, draft: Draft, ctx: Context[SettingsT, PartT, ResultT], result: ResultT) -> ManifestPart:
        """Add the stage's tables, units columns and arrays to the catalog being written; return what it adds to
        the manifest (its sections and settings, facts for the summary and the layers)."""
        raise NotImplementedError
