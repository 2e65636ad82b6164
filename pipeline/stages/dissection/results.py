"""What the dissection stage hands its writer."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.stages.dissection.tally import DissectionResult


@dataclass
class DissectionOutput:
    """Results per layer (computed and reused) and the concept images used or skipped."""

    layers: dict[str, DissectionResult]
    images_used: int
    skipped: list[tuple[int, str]]
