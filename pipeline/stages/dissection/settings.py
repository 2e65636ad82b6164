"""[stages.dissection]: Network Dissection's thresholds and what counts as interpretable."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError
from pipeline.job.checks import at_least_one


@dataclass(frozen=True)
class DissectionSettings:
    quantile: float = 0.005  # per-unit threshold: the top fraction of all raw activations
    iou_threshold: float = 0.04  # best IoU at or above this: interpretable
    top: int = 5  # concepts kept per unit and category in dissection.parquet
    threshold_memory_mb: int = 256  # above this, exact thresholds take 3 counting passes in bounded memory


def check(s: DissectionSettings, key: str) -> None:
    if s.threshold_memory_mb < 0:
        raise UserError(f"job key '{key}.threshold_memory_mb' must be 0 or more, got {s.threshold_memory_mb}.")
    if not 0 < s.quantile < 1:
        raise UserError(f"job key '{key}.quantile' must be between 0 and 1 (exclusive), got {s.quantile}; "
                        "NetDissect uses 0.005.")
    if not 0 <= s.iou_threshold <= 1:
        raise UserError(f"job key '{key}.iou_threshold' must be between 0 and 1, got {s.iou_threshold}; "
                        "NetDissect uses 0.04.")
    at_least_one({f"{key}.top": s.top})
