"""[stages.dissection]: Network Dissection's thresholds and what counts as interpretable."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.job.checks import at_least_one
from pipeline.stages.dissection.concept_masks import UNIONS


@dataclass(frozen=True)
class DissectionSettings:
    quantile: float = 0.005  # per-unit threshold: the top fraction of all raw activations
    threshold: str = "quantile"  # "quantile": the top `quantile` rule; "iqr": GAN Dissection's rule (iqr.py)
    iou_threshold: float = 0.04  # best IoU at or above this: interpretable
    top: int = 5  # concepts kept per unit and category in dissection.parquet
    threshold_memory_mb: int = 256  # above this, exact thresholds take 3 counting passes in bounded memory
    union: str = "netdissect-lite"  # how labels and a category's union term count (see README, "Network Dissection")
    resize: str = "netdissect-lite"  # maps to mask size: Pillow's antialiased bilinear, or "bilinear" sampling

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        if self.threshold_memory_mb < 0:
            raise UserError(f"job key '{key}.threshold_memory_mb' must be 0 or more, got {self.threshold_memory_mb}.")
        if not 0 < self.quantile < 1:
            raise UserError(f"job key '{key}.quantile' must be between 0 and 1 (exclusive), got {self.quantile}; "
                            "NetDissect uses 0.005.")
        if not 0 <= self.iou_threshold <= 1:
            raise UserError(f"job key '{key}.iou_threshold' must be between 0 and 1, got {self.iou_threshold}; "
                            "NetDissect uses 0.04.")
        at_least_one({f"{key}.top": self.top})
        for name, value, allowed in (("union", self.union, UNIONS), ("resize", self.resize, RESIZES),
                                     ("threshold", self.threshold, THRESHOLDS)):
            if value not in allowed:
                raise UserError(f"job key '{key}.{name}' must be {' or '.join(map(repr, allowed))}, got {value!r}; "
                                f"{allowed[0]!r} counts as NetDissect-Lite does (see the README).")


RESIZES = ("netdissect-lite", "bilinear")
THRESHOLDS = ("quantile", "iqr")
