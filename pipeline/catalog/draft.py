"""The catalog being written: what each stage adds to it (tables, arrays, units columns, manifest sections)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import catalog_schema as cs
from catalog_schema import ArrayKind
from catalog_schema.storage import copy_array, write_array, write_table


@dataclass
class Draft:
    """The catalog being written under .staging: each stage adds its tables, arrays, units columns and
    manifest sections; the units table and the manifest are written once every stage has added its part."""

    root: Path
    units: dict[str, Any]  # the units table's columns
    manifest: dict[str, Any]

    def table(self, name: str, columns: dict[str, Any] | pa.Table) -> None:
        write_table(self.root, name, columns if isinstance(columns, pa.Table) else cs.to_table(name, columns))

    def array(self, kind: ArrayKind, layer: str, data: np.ndarray, attrs: dict[str, Any] | None = None) -> None:
        write_array(self.root, kind, layer, data, attrs)

    def copy_array(self, source: Path, kind: ArrayKind, layer: str) -> None:
        """An array of a previous catalog, as it is (a result reused by re-analysis)."""
        copy_array(source, self.root, kind, layer)


@dataclass
class ManifestPart:
    """What one stage's write adds to the manifest; the writer merges the stages' parts in pipeline order and refuses
    one that would replace what another stage wrote."""

    sections: dict[str, Any] = field(default_factory=dict)  # its own top-level sections
    settings: Any = None  # its settings as used (manifest["settings"][stage])
    summary: dict[str, Any] = field(default_factory=dict)  # facts added to manifest["summary"]
    layers: dict[str, dict[str, Any]] = field(default_factory=dict)  # layer -> facts added to its manifest["layers"] entry

    def merge_into(self, manifest: dict[str, Any], stage: str) -> None:
        _add(manifest, self.sections, stage)
        if self.settings is not None:
            _add(manifest["settings"], {stage: self.settings}, stage)
        if self.summary:
            _add(manifest["summary"], self.summary, stage)
        entries = {entry["name"]: entry for entry in manifest.get("layers", [])}
        for layer, facts in self.layers.items():
            _add(entries[layer], facts, stage)


def _add(into: dict[str, Any], new: dict[str, Any], stage: str) -> None:
    taken = sorted(set(into) & set(new))
    if taken:
        raise ValueError(f"stage {stage} would replace {taken} of the manifest, written by another stage")
    into.update(new)
