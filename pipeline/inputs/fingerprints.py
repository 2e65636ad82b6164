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


def _hash_tensors(h: "hashlib._Hash", named: list[tuple[str, torch.Tensor]]) -> None:
    for name, t in named:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too (BatchNorm counts)


def model_fingerprint(model: nn.Module) -> str:
    """Architecture (module tree) and every parameter and buffer."""
    h = hashlib.sha256(repr(model).encode())
    _hash_tensors(h, list(model.state_dict().items()))
    return h.hexdigest()


def layer_fingerprints(model: nn.Module, layers: list[str], input_shape: tuple[int, ...]) -> dict[str, str]:
    """Per layer: a hash of the parameters and buffers of every module that ran before its output was ready.

    Found by running one forward pass and recording leaf modules in execution order,
    so a change to a later layer leaves an earlier layer's fingerprint as it was.
    """
    modules = dict(model.named_modules())
    order: list[str] = []
    ready: dict[str, int] = {}
    handles = []
    for name, module in modules.items():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name)))
    for name in layers:
        handles.append(modules[name].register_forward_hook(lambda _m, _i, _o, name=name: ready.__setitem__(name, len(order))))
    try:
        with torch.inference_mode():
            model(torch.zeros((1, *input_shape)))
    finally:
        for handle in handles:
            handle.remove()
    out = {}
    for name in layers:
        upstream = sorted(set(order[: ready[name]]) | {name})
        h = hashlib.sha256()
        for mod in upstream:
            h.update(f"{mod}\0{type(modules[mod]).__name__}\0{modules[mod].extra_repr()}\n".encode())
            _hash_tensors(h, [(f"{mod}.{k}", v) for k, v in modules[mod].state_dict().items()])
        out[name] = h.hexdigest()
    return out


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
