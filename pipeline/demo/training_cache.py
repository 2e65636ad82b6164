"""Caching a demo training run by a fingerprint of its recipe: the weights (a state_dict) beside a JSON record of
the recipe's fingerprint, the weights' sha256 and what training measured; both must match to skip training."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from catalog_schema.storage import write_atomically


def sidecar(weights: Path) -> Path:
    """The JSON record beside the weights."""
    return weights.with_suffix(".json")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fingerprint(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def cached_record(weights: Path, key: str) -> dict | None:
    """The record when its fingerprint is `key` and the weights are the ones it recorded; else None."""
    try:
        record = json.loads(sidecar(weights).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("fingerprint") != key or not weights.exists() or record.get("weights_sha256") != sha256_of(weights):
        return None
    return {**record, "cached": True}


def train_cached(weights: Path, recipe: dict, train: Callable[[], tuple[nn.Module, dict]]) -> dict:
    """The record of the weights at `weights` made by `recipe`; else train() -> (model, measures), saved."""
    key = fingerprint(recipe)
    found = cached_record(weights, key)
    if found is not None:
        return found
    model, measures = train()
    weights.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(weights, lambda p: torch.save(model.state_dict(), p))
    record = {"fingerprint": key, "weights_sha256": sha256_of(weights), "recipe": recipe, **measures}
    write_atomically(sidecar(weights), lambda p: p.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n"))
    return {**record, "cached": False}
