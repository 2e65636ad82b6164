"""[stages.unit_map]: how each layer's units are laid out in two dimensions."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError

METHODS = ("pacmap", "pca")


@dataclass(frozen=True)
class MapSettings:
    method: str = "pacmap"  # "pacmap" (Wang et al. 2021: neighbourhoods and global structure) or "pca" (the two
    # principal components: exact, linear)
    neighbors: int = 10  # PaCMAP's nearest-neighbour pairs per unit (its default)

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        if self.method not in METHODS:
            raise UserError(f"job key '{key}.method' must be one of {', '.join(METHODS)}, got {self.method!r}.")
        if self.neighbors < 1:
            raise UserError(f"job key '{key}.neighbors' must be at least 1, got {self.neighbors}.")
