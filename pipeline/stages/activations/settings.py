"""[stages.activations]: how many examples to keep per unit and how to store them."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pipeline.errors import UserError
from pipeline.job.checks import at_least_one

SPECTRUM_KEYS = ("spectrum_quantiles", "spectrum_k", "spectrum_memory_mb")  # what only the spectrum depends on


@dataclass(frozen=True)
class ActivationsSettings:
    k: int = 16
    patch_size: int = 64  # pixels of the stored receptive-field crops
    probe_images: int = 256  # images whose per-unit mean activation is kept for `diff` (0: none)
    spectrum_quantiles: int = 8  # the activation spectrum: examples at Q evenly spaced quantiles (0: none)
    spectrum_k: int = 4  # examples per quantile
    spectrum_memory_mb: int = 4096  # most driver memory the spectrum's per-image maxima may take; above, the run is refused

    def without_spectrum(self) -> dict:
        """The settings every other stage's results depend on (the spectrum's keys left out, so a catalog written
        before the spectrum existed hashes the same)."""
        return {key: value for key, value in asdict(self).items() if key not in SPECTRUM_KEYS}

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        at_least_one({f"{key}.k": self.k, f"{key}.patch_size": self.patch_size, f"{key}.spectrum_k": self.spectrum_k,
                      f"{key}.spectrum_memory_mb": self.spectrum_memory_mb})
        for name, off in (("probe_images", "no probes"), ("spectrum_quantiles", "no activation spectrum")):
            if getattr(self, name) < 0:
                raise UserError(f"job key '{key}.{name}' must be 0 ({off}) or more, got {getattr(self, name)}.")
