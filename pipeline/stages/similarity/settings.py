"""[stages.similarity]: how many neighbours each unit keeps, and which comparisons are made."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class SimilaritySettings:
    neighbours: int = 10  # nearest units kept per unit, per compared layer and kind
    adjacent: bool = True  # also the nearest units of the layers just before and after (by activation)
    weights: bool = True  # also the nearest units of the same layer by the cosine of their weights

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        if self.neighbours < 1:
            raise UserError(f"job key '{key}.neighbours' must be at least 1, got {self.neighbours}.")
