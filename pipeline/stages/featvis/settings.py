"""[stages.featvis]: the job's feature-visualization section, and the render settings derived from it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.errors import UserError
from pipeline.job.checks import at_least_one


@dataclass(frozen=True)
class FeatvisSection:
    steps: int = 128
    size: int = 0  # 0: 128 px, or the model's input size when that is smaller
    lr: float = 0.2  # Adam's peak learning rate (Lucid: 0.05, constant)
    schedule: str = "cosine"  # warm-up over the first 10% of the steps, then cosine decay to 5% of lr; or "constant" (Lucid)
    chroma: float = 1.0  # color preconditioning (param.py): 1 gives every color direction the same step; 0 is Lucid's basis
    polish: int = 16  # the last steps run without transforms (0: none, as Lucid)
    param: str = "fourier"  # or "pixel"
    transforms: str = "standard"  # or "none"
    objective: str = "rectified"  # channel (Lucid's) | neuron | layer | class_logit | class_prob
    negative: bool = True  # also render an image that inhibits the unit
    diversity: int = 0  # also render a diverse set of this many images per unit
    batch_units: int = 32  # images optimized together (fixed: results must not depend on it)
    layers: tuple[str, ...] = ()  # layers to render (paths or globs among model.layers); empty: all of them
    tv: float = 0.0  # frequency penalization: total-variation weight (0: off)
    blur: float = 0.0  # frequency penalization: weight of the distance to the blurred image (0: off)

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        at_least_one({f"{key}.steps": self.steps, f"{key}.batch_units": self.batch_units})
        for name, allowed in (("param", ("fourier", "pixel")), ("transforms", ("standard", "none")),
                              ("schedule", ("cosine", "constant")),
                              ("objective", ("rectified", "channel", "neuron", "layer", "class_logit", "class_prob"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"job key '{key}.{name}' must be one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}.")
        if self.chroma < 0 or self.polish < 0:
            raise UserError(f"job keys '{key}.chroma' and '{key}.polish' must be 0 or more, "
                            f"got {self.chroma} and {self.polish}.")
        if self.size < 0 or self.diversity < 0 or self.diversity == 1 or self.lr <= 0 or self.tv < 0 or self.blur < 0:
            raise UserError(f"job keys '{key}.size' (0: automatic), 'diversity' (0, or 2 and more), 'lr' "
                            f"(positive), 'tv' and 'blur' (0 or more) got {self.size}, {self.diversity}, {self.lr}, "
                            f"{self.tv}, {self.blur}.")


@dataclass(frozen=True)
class FeatvisSettings(FeatvisSection):
    """What a render needs: the section with its size resolved, the model's normalization, fixed constants."""

    size: int = 128
    diversity_weight: float = 1.0
    warmup: float = 0.1
    final_lr: float = 0.05
    redirect_steps: int = 16  # steps with Lucid's redirected ReLU gradient
    flat_std: float = 0.01  # a positive image whose pixels vary less than this (in [0, 1]) is flagged flat
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    input_size: int = 0  # 0: the model takes any size; else (position embeddings) every image is resized to it
    latent: tuple[int, ...] = ()  # a generator's latent shape: the latent is optimized, not an image (latent.py)
    distribution: str = ""  # its sampler's distribution ([latents])

    def views(self) -> list[tuple[str, int]]:
        """(kind, copy) of each stored image of a unit: positive, negative, then the diverse set."""
        return [("positive", 0)] + ([("negative", 0)] if self.negative else []) + \
            [("diverse", i) for i in range(self.diversity)]

    def described(self) -> dict:
        """The settings a unit's images depend on (the manifest's settings.featvis; which layers is not one)."""
        out = asdict(self)
        del out["layers"]
        return out
