"""Value checks shared by the job loader and the stages' sections: each failure names the job key."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.job.config import JobConfig


def at_least_one(values: dict[str, int]) -> None:
    """Every value (keyed by its full job key) must be 1 or more."""
    for key, value in values.items():
        if value < 1:
            raise UserError(f"job key '{key}' must be at least 1, got {value}.")


def check_exists(job: JobConfig, key: str, path: Path | None) -> None:
    if path is not None and not path.exists():
        raise UserError(f"job key '{key}' points to {path}, which does not exist. Fix the path (relative to {job.path.parent}).")
