"""A job file's typed form: one frozen dataclass per table (the stages' sections live with their stages).

Every key of the job file (README, "Catalog your own model") maps to a dataclass field; the field's type is the
validation rule (see load.py). Paths are relative to the job file's directory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    torchvision: str = ""
    timm: str = ""  # a timm model name (timm.list_models()), built with pretrained=False: weights from `weights`
    factory: str = ""
    archive: Path | None = None  # a saved model: a torch.export archive (.pt2) or TorchScript (.pt)
    torchscript: Path | None = None  # the key's old name (it always read .pt2 archives too): kept as an alias
    weights: Path | None = None
    trust_weights: bool = False  # true: unpickle arbitrary objects from `weights` (runs code: trusted files only)
    num_classes: int = 0  # 0: the torchvision architecture's default
    layers: tuple[str, ...] = ()  # module paths or globs; empty: every Conv2d and Linear that the forward runs
    layouts: dict[str, str] = field(default_factory=dict)  # module path or glob -> "nchw" | "nc" | "nhwc" | "tokens"
    input_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD


@dataclass(frozen=True)
class DataConfig:
    images: Path | None = None
    limit: int = 0  # 0 = all; else a seeded sample of this many files
    batch_size: int = 64


@dataclass(frozen=True)
class LatentsConfig:
    """[latents]: the model is a generator; its inputs are latents drawn with `seed` (row i from its own generator,
    so a larger count keeps the first rows), and its outputs, mapped to pixels by [model] mean and std, are the
    images every stage reads (written once to `folder`)."""

    count: int = 512
    shape: tuple[int, ...] = ()  # one latent's shape (no batch axis)
    distribution: str = "normal"  # "normal": N(0, 1); "uniform": U(-1, 1)
    seed: int = 0
    folder: Path | None = None  # where the generated sample is written; default: beside the catalog, <catalog>.sample


@dataclass(frozen=True)
class ConceptsConfig:
    broden: Path | None = None
    categories: tuple[str, ...] | None = None  # None: every category column of index.csv
    segmenter: str = ""  # a generator job's segmenter: "file.py:function" or "pkg.module:function" (README)
    segmenter_weights: Path | None = None  # its state_dict


@dataclass(frozen=True)
class StagesConfig:
    """The [stages.<name>] tables of the job, each as its stage's settings (pipeline.stages.STAGES)."""

    sections: dict[str, Any] = field(default_factory=dict)  # stage name -> settings, in pipeline order
    known: tuple[str, ...] = ()  # every stage name, for the job's plain form

    def requested(self) -> tuple[str, ...]:
        """Stage names whose table is present in the job, in pipeline order."""
        return tuple(self.sections)

    def to_dict(self) -> dict[str, Any]:
        """Every known stage's section (None where the job has no table for it)."""
        return {name: _plain(dataclasses.asdict(self.sections[name])) if name in self.sections else None
                for name in self.known}


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
    """Generate the concept world at `path` ([concepts] broden when not given) when it is missing."""

    path: Path | None = None
    images: int = 800
    size: int = 64
    seed: int = 0


@dataclass(frozen=True)
class DemoModelRecipe:
    """Train the demo model into [model] weights when missing or trained from another recipe."""

    epochs: int = 20
    seed: int = 0


@dataclass(frozen=True)
class DemoGeneratorRecipe:
    """Train the demo generator into [model] weights and its segmenter into [concepts] segmenter_weights, on the
    concept world at [prepare.concept_world] path, when missing or trained from another recipe."""

    epochs: int = 40
    segmenter_epochs: int = 12
    seed: int = 0


@dataclass(frozen=True)
class PrepareConfig:
    concept_world: ConceptWorldRecipe | None = None
    demo_model: DemoModelRecipe | None = None
    demo_generator: DemoGeneratorRecipe | None = None


@dataclass(frozen=True)
class JobConfig:
    path: Path
    seed: int = 0
    previous: str = ""  # a catalog to reuse unchanged results from (relative to the job file), or "latest"
    model: ModelConfig = field(default_factory=ModelConfig)
    latents: LatentsConfig | None = None
    data: DataConfig = field(default_factory=DataConfig)
    concepts: ConceptsConfig = field(default_factory=ConceptsConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (paths as strings) for the manifest and fingerprints."""
        return {**_plain(dataclasses.asdict(self)), "stages": self.stages.to_dict()}


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
