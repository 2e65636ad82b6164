"""Content hashes that say whether a model, a layer, a data set or a config changed between runs."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn


def json_fingerprint(obj: Any) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


SCHEME = 5  # how layer fingerprints are made (3: with the layout, 4: dissection keeps purity, 5: the preprocessing
# names a generator's latents); a catalog of another
# scheme has nothing to reuse


def hash_tensors(h: "hashlib._Hash", named: list[tuple[str, torch.Tensor]]) -> None:
    for name, t in named:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too (BatchNorm counts)


def model_fingerprint(model: nn.Module) -> str:
    """Architecture (module tree) and every parameter and buffer."""
    h = hashlib.sha256(repr(model).encode())
    hash_tensors(h, list(model.state_dict().items()))
    return h.hexdigest()


def concepts_fingerprint(broden: Any) -> str:
    """The concept data set as the run reads it: index and label tables, kept categories, and each
    listed file's size (content hashes of every mask would cost a full read of the data set)."""
    h = hashlib.sha256()
    for table in ("index.csv", "label.csv"):
        h.update((broden.root / table).read_bytes())
    h.update(json.dumps(list(broden.categories)).encode())
    for image in broden.images:
        for rel in (image.image, *(p for paths in image.masks.values() for p in paths)):
            path = broden.root / "images" / rel
            h.update(f"{rel}\0{path.stat().st_size if path.exists() else -1}\n".encode())
    return h.hexdigest()
