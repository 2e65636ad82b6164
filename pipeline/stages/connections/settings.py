"""[stages.connections]: how many connections each unit keeps."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class ConnectionsSettings:
    top: int = 8  # strongest inputs (and outputs) kept per unit, of each sign: excitatory and inhibitory

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        if self.top < 1:
            raise UserError(f"job key '{key}.top' must be at least 1, got {self.top}.")
