"""[stages.interventions]: GAN Dissection's causal test of a generator's units (Bau et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.job.checks import at_least_one


@dataclass(frozen=True)
class InterventionsSettings:
    layers: tuple[str, ...] = ()  # cataloged layers to intervene at; empty: every cataloged layer with a grid
    max_units: int = 20  # the curves' n: 1..max_units units (the layer's units at most)
    concepts: int = 8  # concepts per layer: those labelling the most interpretable units of the layer
    images: int = 16  # per concept: generated images where it is present (ablation) and absent (insertion)
    present: float = 0.01  # a concept is present in an image when it covers at least this fraction of its pixels
    draws: int = 3  # random unit sets per n (the baseline curve averages them)
    insert_cells: int = 0  # side of the inserted square, in grid cells; 0: a quarter of the grid's side
    examples: int = 3  # images per before/after strip

    def check(self, key: str) -> None:
        at_least_one({f"{key}.max_units": self.max_units, f"{key}.concepts": self.concepts,
                      f"{key}.images": self.images, f"{key}.draws": self.draws, f"{key}.examples": self.examples})
        if not 0 < self.present < 1:
            raise UserError(f"job key '{key}.present' must be between 0 and 1 (exclusive), got {self.present}.")
        if self.insert_cells < 0:
            raise UserError(f"job key '{key}.insert_cells' must be 0 or more, got {self.insert_cells}.")
