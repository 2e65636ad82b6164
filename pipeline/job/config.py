"""Job files (TOML) turned into typed, validated configuration.

Every key of DESIGN.md's job file maps to a dataclass field below; the field's
type is the validation rule. Paths are relative to the job file's directory.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import UserError

STAGES = ("activations", "featvis", "dissection", "shapley")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    torchvision: str = ""
    factory: str = ""
    torchscript: Path | None = None
    weights: Path | None = None
    trust_weights: bool = False  # true: unpickle arbitrary objects from `weights` (runs code: trusted files only)
    num_classes: int = 0  # 0: the torchvision architecture's default
    layers: tuple[str, ...] = ()  # module paths or globs; empty: every Conv2d and Linear
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


@dataclass(frozen=True)
class DataConfig:
    images: Path | None = None
    limit: int = 0  # 0 = all; else a seeded sample of this many files
    batch_size: int = 64


@dataclass(frozen=True)
class ConceptsConfig:
    broden: Path | None = None
    categories: tuple[str, ...] | None = None  # None: every category column of index.csv


@dataclass(frozen=True)
class ActivationsConfig:
    k: int = 16
    patch_size: int = 64  # pixels of the stored receptive-field crops
    probe_images: int = 256  # images whose per-unit mean activation is kept for `diff` (0: none)


@dataclass(frozen=True)
class FeatvisConfig:
    steps: int = 512
    size: int = 0  # 0: 128 px, or the model's input size when that is smaller
    lr: float = 0.05
    param: str = "fourier"  # or "pixel"
    transforms: str = "standard"  # or "none"
    objective: str = "channel"  # neuron | layer | class_logit | class_prob
    negative: bool = True  # also render an image that inhibits the unit
    diversity: int = 0  # also render a diverse set of this many images per unit
    batch_units: int = 32  # images optimized together
    layers: tuple[str, ...] = ()  # layers to render (paths or globs among model.layers); empty: all of them
    tv: float = 0.0  # frequency penalization: total-variation weight (0: off)
    blur: float = 0.0  # frequency penalization: weight of the distance to the blurred image (0: off)


@dataclass(frozen=True)
class DissectionConfig:
    quantile: float = 0.005  # per-unit threshold: the top fraction of all raw activations
    iou_threshold: float = 0.04  # best IoU at or above this: interpretable
    top: int = 5  # concepts kept per unit and category in dissection.parquet
    threshold_memory_mb: int = 256  # above this, exact thresholds take 3 counting passes in bounded memory


@dataclass(frozen=True)
class ShapleyConfig:
    metric: str = "accuracy"  # or "cross_entropy" (V = minus the mean cross-entropy)
    eval_images: int = 256  # a seeded subset of the labelled images
    target_class: int = -1  # -1: the whole metric; N: the metric on class N's images
    layers: tuple[str, ...] = ()  # player layers (paths or globs among model.layers); empty: all of them
    top_k: int = 10  # the bandit settles membership in the top k
    rounds: int = 30  # at most this many rounds of permutations
    permutations_per_round: int = 8
    bandit: bool = True  # false: plain truncated Monte-Carlo (every player sampled in every walk)
    tolerance: float = 0.01  # truncate a walk once V stays within this of V(all units removed)...
    patience: int = 6  # ... for this many evaluations in a row (tolerance 0: never truncate)
    delta: float = 0.2  # the bandit's confidence parameter (the paper's)
    ci_delta: float = 0.05  # reported intervals hold with probability 1 - ci_delta


@dataclass(frozen=True)
class StagesConfig:
    activations: ActivationsConfig | None = None
    featvis: FeatvisConfig | None = None
    dissection: DissectionConfig | None = None
    shapley: ShapleyConfig | None = None

    def requested(self) -> tuple[str, ...]:
        """Stage names whose table is present in the job, in pipeline order."""
        return tuple(name for name in STAGES if getattr(self, name) is not None)


@dataclass(frozen=True)
class RayConfig:
    address: str = ""
    workers: int = 0  # 0: one per GPU, else one per `cpus_per_worker` CPUs
    gpus_per_worker: float = 1.0
    cpus_per_worker: int = 2
    shard_images: int = 256


@dataclass(frozen=True)
class OutputConfig:
    catalog: Path | None = None
    history: bool = False  # write catalog/<UTC time>/ and point catalog/latest at it


@dataclass(frozen=True)
class ConceptWorldRecipe:
    """Generate the concept world at [concepts] broden when it is missing."""

    images: int = 800
    size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class DemoModelRecipe:
    """Train the demo model into [model] weights when missing or trained from another recipe."""

    epochs: int = 20
    seed: int = 0


@dataclass(frozen=True)
class PrepareConfig:
    concept_world: ConceptWorldRecipe | None = None
    demo_model: DemoModelRecipe | None = None


@dataclass(frozen=True)
class JobConfig:
    path: Path
    seed: int = 0
    previous: str = ""  # a catalog to reuse unchanged results from (relative to the job file), or "latest"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (paths as strings) for the manifest and fingerprints."""
        return _plain(dataclasses.asdict(self))


def load_job(path: str | Path) -> JobConfig:
    """Read and validate a job file; every problem is a UserError naming the key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"job file {path} does not exist: pass the path of a TOML job file (see jobs/demo.toml).")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"job file {path} is not valid TOML: {exc}. Fix the syntax at that line.") from None
    job = _build(JobConfig, raw, "", path.resolve().parent, extra={"path": path.resolve()})
    _check_values(job)
    target, _, fn = job.model.factory.rpartition(":")
    if target.endswith(".py"):  # a factory file is relative to the job file, like every other path
        job = dataclasses.replace(job, model=dataclasses.replace(job.model, factory=f"{(job.path.parent / target).resolve()}:{fn}"))
    return job


def _build(cls: type, table: Any, where: str, base: Path, extra: dict[str, Any] | None = None) -> Any:
    if not isinstance(table, dict):
        raise UserError(f"job key [{where}] must be a table, got {table!r}.")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in (extra or {})]
    values: dict[str, Any] = dict(extra or {})
    for key, value in table.items():
        full = f"{where}.{key}" if where else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UserError(f"unknown job key '{full}'.{hint} Valid keys here: {', '.join(names)}.")
        values[key] = _convert(hints[key], value, full, base)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # X | None: the X part decides
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key, base)
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}.get(item, str(item))
            raise UserError(f"job key '{key}' must be a list of {plural}, got {value!r}: write e.g. {key.rsplit('.', 1)[-1]} = [...].")
        return tuple(_convert(item, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise UserError(f"job key '{key}' must be a non-empty path string, got {value!r}.")
        return (base / value).resolve()
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float):
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise UserError(f"job key '{key}' must be {_name(hint)}, got {value!r} ({type(value).__name__}).")
    raise TypeError(f"unsupported type {hint} for {key}")  # a bug in this module, not user input


def _name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(t, str(t))


def _check_values(job: JobConfig) -> None:
    m = job.model
    sources = [n for n in ("torchvision", "factory", "torchscript") if getattr(m, n)]
    if len(sources) != 1:
        raise UserError(
            f"job file {job.path}: [model] needs exactly one of torchvision = NAME, factory = \"module:function\" "
            f"or torchscript = FILE; found {sources or 'none'}."
        )
    if m.factory and ":" not in m.factory:
        raise UserError(f"job key 'model.factory' = {m.factory!r} must look like \"pkg.module:function\" or \"file.py:function\".")
    if len(m.mean) != len(m.std) or len(m.mean) not in (1, 3):
        raise UserError("job keys 'model.mean' and 'model.std' must both list 1 (grayscale) or 3 (RGB) numbers.")
    if any(s <= 0 for s in m.std):
        raise UserError(f"job key 'model.std' must be positive, got {list(m.std)}.")
    positive = {
        "model.input_size": m.input_size, "data.batch_size": job.data.batch_size,
        "ray.shard_images": job.ray.shard_images, "ray.cpus_per_worker": job.ray.cpus_per_worker,
    }
    if job.stages.activations:
        positive["stages.activations.k"] = job.stages.activations.k
        positive["stages.activations.patch_size"] = job.stages.activations.patch_size
    if job.stages.featvis:
        fv = job.stages.featvis
        for key in ("steps", "batch_units"):
            positive[f"stages.featvis.{key}"] = getattr(fv, key)
        for key, allowed in (("param", ("fourier", "pixel")), ("transforms", ("standard", "none")),
                             ("objective", ("channel", "neuron", "layer", "class_logit", "class_prob"))):
            if getattr(fv, key) not in allowed:
                raise UserError(f"job key 'stages.featvis.{key}' must be one of {', '.join(allowed)}, got {getattr(fv, key)!r}.")
        if fv.size < 0 or fv.diversity < 0 or fv.diversity == 1 or fv.lr <= 0 or fv.tv < 0 or fv.blur < 0:
            raise UserError("job keys 'stages.featvis.size' (0: automatic), 'diversity' (0, or 2 and more), 'lr' "
                            f"(positive), 'tv' and 'blur' (0 or more) got {fv.size}, {fv.diversity}, {fv.lr}, {fv.tv}, {fv.blur}.")
    if job.stages.shapley:
        sh = job.stages.shapley
        for key in ("eval_images", "top_k", "rounds", "permutations_per_round", "patience"):
            positive[f"stages.shapley.{key}"] = getattr(sh, key)
        if sh.metric not in ("accuracy", "cross_entropy"):
            raise UserError(f"job key 'stages.shapley.metric' must be \"accuracy\" or \"cross_entropy\", got {sh.metric!r}.")
        for key in ("delta", "ci_delta"):
            if not 0 < getattr(sh, key) < 1:
                raise UserError(f"job key 'stages.shapley.{key}' must be between 0 and 1, got {getattr(sh, key)}.")
        if sh.tolerance < 0:
            raise UserError(f"job key 'stages.shapley.tolerance' must be 0 or more, got {sh.tolerance}.")
    if job.stages.dissection:
        d = job.stages.dissection
        positive["stages.dissection.top"] = d.top
        if d.threshold_memory_mb < 0:
            raise UserError(f"job key 'stages.dissection.threshold_memory_mb' must be 0 or more, got {d.threshold_memory_mb}.")
        if not 0 < d.quantile < 1:
            raise UserError(f"job key 'stages.dissection.quantile' must be between 0 and 1 (exclusive), got {d.quantile}; "
                            "NetDissect uses 0.005.")
        if not 0 <= d.iou_threshold <= 1:
            raise UserError(f"job key 'stages.dissection.iou_threshold' must be between 0 and 1, got {d.iou_threshold}; "
                            "NetDissect uses 0.04.")
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"job key '{key}' must be at least 1, got {value}.")
    probes = job.stages.activations.probe_images if job.stages.activations else 0
    for key, value in {"data.limit": job.data.limit, "ray.workers": job.ray.workers,
                       "stages.activations.probe_images": probes}.items():
        if value < 0:
            raise UserError(f"job key '{key}' must be 0 or more, got {value}.")
    if job.ray.gpus_per_worker < 0:
        raise UserError(f"job key 'ray.gpus_per_worker' must be 0 or more, got {job.ray.gpus_per_worker}.")
    if job.data.images is None:
        raise UserError(f"job file {job.path}: [data] images is missing: set it to an image folder.")
    if job.output.catalog is None:
        raise UserError(f"job file {job.path}: [output] catalog is missing: set it to the catalog directory to write.")
    check_output_location(job, job.output.catalog, "[output] catalog")


def check_output_location(job: JobConfig, catalog: Path, key: str = "--out") -> None:
    """The catalog must not be, lie inside, or hold a data set the run reads ([data] images, [concepts] broden).

    Inside one, the run would write its tables and arrays into the data set (and read them back as data
    next time); holding one, the data would live in a folder the run writes, stages and replaces files in.
    """
    catalog = catalog.resolve()
    for name, data in (("data.images", job.data.images), ("concepts.broden", job.concepts.broden)):
        if data is None:
            continue
        data = data.resolve()
        if catalog == data or data in catalog.parents:
            where = "is" if catalog == data else "is inside"
            raise UserError(f"{key} = {catalog} {where} the data set {name} = {data}: the run would write the catalog "
                            f"into the data it reads. Choose a catalog path outside {data} (paths in the job file are "
                            f"relative to {job.path.parent}).")
        if catalog in data.parents:
            raise UserError(f"{key} = {catalog} holds the data set {name} = {data}: the run writes and replaces files in "
                            "the catalog folder, so the data must not live there. Choose a catalog path beside the "
                            "data, not above it.")


def check_inputs_exist(job: JobConfig, stages: tuple[str, ...]) -> None:
    """The files the run will read must exist; called after [prepare] had its chance to make them."""
    m = job.model
    needed = {"model.weights": m.weights, "model.torchscript": m.torchscript, "data.images": job.data.images}
    if "dissection" in stages:
        needed["concepts.broden"] = job.concepts.broden
        if job.concepts.broden is None:
            raise UserError("stage 'dissection' needs [concepts] broden = a Broden-format directory.")
    if m.factory.rpartition(":")[0].endswith(".py"):
        needed["model.factory"] = Path(m.factory.rpartition(":")[0])
    for key, p in needed.items():
        if p is not None and not p.exists():
            raise UserError(f"job key '{key}' points to {p}, which does not exist. Fix the path (relative to {job.path.parent}).")


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
