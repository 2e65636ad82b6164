"""[stages.class_pages]: the layer Grad-CAM and IBD read, how many top images per class, how many IBD concepts."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import UserError


@dataclass(frozen=True)
class ClassesSettings:
    layer: str = ""  # a cataloged layer whose channels the classifier's final Linear reads (pooled); "" = the last such
    top: int = 6  # top images per class (by its logit), each with its Grad-CAM
    concepts: int = 7  # IBD's greedy steps: concepts per class at most (IBD's own number)
    image_size: int = 96  # pixels of the stored top images

    def check(self, key: str) -> None:
        """Refuse a bad value with a UserError naming the job key (`key`.field) and what would fix it."""
        for name in ("top", "concepts"):
            if getattr(self, name) < 1:
                raise UserError(f"job key '{key}.{name}' must be at least 1, got {getattr(self, name)}.")
        if not 16 <= self.image_size <= 512:
            raise UserError(f"job key '{key}.image_size' must be between 16 and 512 pixels, got {self.image_size}.")
