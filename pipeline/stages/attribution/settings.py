"""[stages.attribution]: which layers' top examples get attribution maps, and the occluder of the empirical field."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class AttributionSettings:
    layers: tuple[str, ...] = ()  # cataloged layers (paths or globs among model.layers); empty: every layer but a
    # dictionary's features
    examples: int = 4  # each unit's top examples that get maps (at most the activations stage's k)
    occluder: int = 0  # side in input pixels of the square slid over each example; 0: the input's side / 8
    stride: int = 0  # its step in input pixels; 0: half the occluder
    sanity: bool = True  # the model-randomization check (Adebayo et al. 2018), per layer and method
    sanity_units: int = 32  # units per layer (evenly spaced) whose examples the check maps again: it costs five more
    # backward passes per example, and its verdict is a mean per layer

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        for name in ("examples", "sanity_units"):
            if getattr(self, name) < 1:
                raise UserError(f"job key '{key}.{name}' must be at least 1, got {getattr(self, name)}.")
        for name in ("occluder", "stride"):
            if getattr(self, name) < 0:
                raise UserError(f"job key '{key}.{name}' must be 0 (automatic) or a number of pixels, got "
                                f"{getattr(self, name)}.")

    def occlusion(self, input_size: int) -> tuple[int, int]:
        """(occluder side, stride) in input pixels."""
        side = self.occluder or max(2, input_size // 8)
        return min(side, input_size), self.stride or max(1, side // 2)
