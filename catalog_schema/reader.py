"""Reading a catalog from Python: tables as pandas DataFrames, arrays as numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from catalog_schema.arrays import (ATTRIBUTION, INTERVENTIONS, EMPIRICAL_FIELDS, CLASS_IMAGES, GRADCAM, DICTIONARY_DECODER, DICTIONARY_ENCODER, EXAMPLES, FEATVIS, HEATMAPS, MEAN_MAPS,
                                   PREFIX_TOKENS, PROBES, PROJECTIONS, SPECTRUM, STORE, WEIGHTS, ArrayKind)
from catalog_schema.manifest import LATEST, MANIFEST, CatalogError, read_manifest
from catalog_schema.tables import TABLES, table_file


class Catalog:
    """A finished catalog directory. Open with `Catalog.open(path)`."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        # resolved once: a run that replaces the catalog meanwhile switches the link, not the arrays read here
        self.store = (path / STORE).resolve()

    @classmethod
    def open(cls, path: str | Path) -> Catalog:
        """A catalog directory, or a catalog history (a job with [output] history): then its newest catalog."""
        path = Path(path)
        if not path.is_dir():
            raise CatalogError(f"catalog {path} does not exist: run a job to write it, or check the path.")
        if not (path / MANIFEST).exists() and (path / LATEST).is_dir():
            path = (path / LATEST).resolve()
        return cls(path, read_manifest(path))

    @property
    def layers(self) -> list[str]:
        """The cataloged layers, in model order."""
        return [layer["name"] for layer in self.manifest["layers"]]

    def table(self, name: str) -> pd.DataFrame:
        """Any table by name; an empty frame with the schema's columns when the stage did not run."""
        file = self.path / table_file(name)
        if not file.exists():
            return TABLES[name].empty_table().to_pandas()
        return pd.read_parquet(file)

    def arrow(self, name: str, filters: list | None = None) -> pa.Table:
        """A table as pyarrow with the current schema: nulls stay nulls and NaN stays NaN (pandas would make
        both NaN), and columns an older catalog lacks come back as nulls. What reuse copies must read this way."""
        schema = TABLES[name]
        file = self.path / table_file(name)
        if not file.exists():
            return schema.empty_table()
        table = pq.read_table(file, filters=filters)
        columns = [table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
                   for f in schema]
        return pa.Table.from_arrays(columns, schema=schema)

    def units(self) -> pd.DataFrame:
        """units.parquet as a DataFrame."""
        return self.table("units")

    def images(self) -> pd.DataFrame:
        """images.parquet as a DataFrame."""
        return self.table("images")

    def examples(self, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        """Top and bottom examples, ordered top ranks first; optionally of one layer / unit."""
        return self._rows_of("examples", layer, unit)

    def spectrum(self, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        """The activation spectrum: examples at evenly spaced quantiles of each unit's spatial maxima, in rank order
        (by quantile, then nearest first); optionally of one layer / unit. Empty for a catalog without it."""
        return self._rows_of("spectrum", layer, unit)

    def dissection(self) -> pd.DataFrame:
        """dissection.parquet as a DataFrame."""
        return self.table("dissection")

    def shapley(self) -> pd.DataFrame:
        """shapley.parquet as a DataFrame."""
        return self.table("shapley")

    def banzhaf(self) -> pd.DataFrame:
        """banzhaf.parquet as a DataFrame."""
        return self.table("banzhaf")

    def importance(self) -> pd.DataFrame:
        """Each player's value for the whole metric with an `estimator` column: the Shapley value ('tmc' or 'msr',
        as the manifest lists) when the run estimated it, else Banzhaf; empty when the importance stage did not run."""
        listed = (self.manifest.get("shapley") or {}).get("estimators") or ["tmc"]
        shapley = "msr" if "msr" in listed else "tmc"
        for table in ("shapley", "banzhaf"):
            values = self.table(table)
            if not values.empty:
                return values.assign(estimator=shapley if table == "shapley" else "banzhaf")
        return self.table("shapley").assign(estimator=pd.Series(dtype=str))

    def importance_by_class(self, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        """Per-class values (of one layer / unit), each estimator's rows by class."""
        return self._rows_of("importance_by_class", layer, unit)

    def similar(self, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        """The similarity stage's neighbours (of one layer / unit), nearest first within each (other_layer, kind)."""
        return self._rows_of("similar", layer, unit)

    def connections(self, layer: str | None = None, unit: int | None = None) -> pd.DataFrame:
        """The connections stage's strongest inputs and outputs (of one layer / unit), strongest first per sign."""
        return self._rows_of("connections", layer, unit)

    def classes(self) -> pd.DataFrame:
        """classes.parquet: each class's accuracy and how much of its vector IBD explains."""
        return self.table("classes")

    def class_examples(self, class_index: int | None = None) -> pd.DataFrame:
        """Each class's (or one class's) top images by its logit, in rank order."""
        rows = self.table("class_examples")
        return rows if class_index is None else rows[rows["class_index"] == class_index].reset_index(drop=True)

    def class_concepts(self, class_index: int | None = None) -> pd.DataFrame:
        """Each class's (or one class's) IBD decomposition, in the order the concepts were chosen."""
        rows = self.table("class_concepts")
        return rows if class_index is None else rows[rows["class_index"] == class_index].reset_index(drop=True)

    def attribution(self, layer: str, unit: int | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [E, 3, P, P] the maps of a unit's top E examples: saliency, Grad-CAM, occlusion; uint8 [P, P] its
        empirical receptive field); a slice of units or None: [units, ...]."""
        pick = _units(unit)
        return self._array(ATTRIBUTION, layer)[pick], self._array(EMPIRICAL_FIELDS, layer)[pick]

    def class_pictures(self, class_index: int) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 [top, S, S, 3] a class's top images as the model saw them, float32 [top, h, w] their Grad-CAM)."""
        layer = self.manifest["class_pages"]["layer"]
        return self._array(CLASS_IMAGES, layer)[class_index], self._array(GRADCAM, layer)[class_index]

    def interventions(self, layer: str | None = None) -> pd.DataFrame:
        """The generator_interventions rows (of one layer)."""
        rows = self.table("generator_interventions")
        return rows if layer is None else rows[rows["layer"] == layer].reset_index(drop=True)

    def intervention_strip(self, layer: str, concept: str) -> np.ndarray:
        """uint8 [E, 4, S, S, 3]: the concept's before/after images at the layer (present, ablated, absent, inserted)."""
        array = self._array(INTERVENTIONS, layer)
        concepts = list(array.attrs["concepts"])
        if concept not in concepts:
            raise CatalogError(f"no intervention strip for concept {concept!r} at layer {layer!r}; it has {concepts}.")
        return array[concepts.index(concept)]

    def _rows_of(self, name: str, layer: str | None, unit: int | None) -> pd.DataFrame:
        """A per-unit table's rows, of one layer and unit when given (read with Parquet filters)."""
        filters = [("layer", "==", layer)] if layer is not None else []
        if unit is not None:
            filters.append(("unit", "==", int(unit)))
        file = self.path / table_file(name)
        if not file.exists():
            return TABLES[name].empty_table().to_pandas()
        return pd.read_parquet(file, filters=filters or None).reset_index(drop=True)

    def concepts(self) -> pd.DataFrame:
        """The concept labels the dissection used, with their synonyms."""
        return self.table("concepts")

    def shapley_ablation(self) -> pd.DataFrame:
        """shapley_ablation.parquet as a DataFrame."""
        return self.table("shapley_ablation")

    def _array(self, kind: ArrayKind, layer: str) -> zarr.Array:
        self._check_layer(layer)
        try:
            return zarr.open_array(self.store / kind.group / layer, mode="r")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError):
            raise CatalogError(f"catalog {self.path} has no {kind.group} array for layer {layer!r} (was its stage run?).") from None

    def example_images(self, layer: str, unit: int | slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(crops uint8 [2k, P, P, 3], heat maps uint8 [2k, P, P]) of one unit: top k then bottom k.
        A slice of units (or None: the whole layer) gives [units, 2k, ...]."""
        pick = _units(unit)
        return self._array(EXAMPLES, layer)[pick], self._array(HEATMAPS, layer)[pick]

    def spectrum_images(self, layer: str, unit: int | slice | None = None) -> np.ndarray | None:
        """Crops uint8 [Q*k, P, P, 3] of one unit's spectrum examples, in rank order ([units, Q*k, ...] for a slice
        or None); None when the catalog has no spectrum for the layer (an older catalog, or spectrum_quantiles = 0)."""
        self._check_layer(layer)
        if not self.has_array(SPECTRUM.group, layer):
            return None
        return self._array(SPECTRUM, layer)[_units(unit)]

    def has_array(self, group: str, layer: str) -> bool:
        """Whether the catalog holds that array (e.g. 'featvis') for the layer."""
        return (self.store / group / layer / "zarr.json").exists()

    def featvis(self, layer: str, unit: int | slice | None) -> np.ndarray:
        """Feature visualizations uint8 [V, S, S, 3] of one unit ([units, V, ...] for a slice or None)."""
        return self._array(FEATVIS, layer)[_units(unit)]

    def projections(self, layer: str, unit: int | slice | None) -> np.ndarray:
        """uint8 [k, 2, P, P, 3] of one unit: deconvnet and guided-backprop projections of its top examples."""
        return self._array(PROJECTIONS, layer)[_units(unit)]

    def filters(self, layer: str) -> np.ndarray:
        """uint8 [units, kh, kw, 3]: the filters of a layer that convolves the input (128 = 0)."""
        return self._array(WEIGHTS, layer)[...]

    def probes(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(float32 [units, m] mean activation of each unit on each probe image, int64 [m] their image ids)."""
        arr = self._array(PROBES, layer)
        return arr[...], np.asarray(arr.attrs["image_ids"], dtype=np.int64)

    def prefix_tokens(self, layer: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(float16 [units, images, P] each unit's activation at a token layer's prefix tokens (class, registers) on
        every image, int64 [images] their image ids); None for a layer without prefix tokens."""
        self._check_layer(layer)
        if not self.has_array(PREFIX_TOKENS.group, layer):
            return None
        arr = self._array(PREFIX_TOKENS, layer)
        return arr[...], np.asarray(arr.attrs["image_ids"], dtype=np.int64)

    def dictionary_quality(self) -> pd.DataFrame:
        """dictionary_quality.parquet as a DataFrame (empty columns when the dictionary stage did not run)."""
        return self.table("dictionary_quality")

    def dictionary(self, layer: str) -> dict[str, Any]:
        """A layer's sparse dictionary: {encoder [F, C], encoder_bias [F], decoder [F, C], decoder_bias [C], k, scale}
        (see the dictionary_encoder array's doc for how a position is encoded)."""
        decoder, encoder = self._array(DICTIONARY_DECODER, layer), self._array(DICTIONARY_ENCODER, layer)
        return {"encoder": encoder[...], "encoder_bias": np.asarray(encoder.attrs["encoder_bias"], np.float32),
                "decoder": decoder[...], "decoder_bias": np.asarray(decoder.attrs["decoder_bias"], np.float32),
                "k": int(decoder.attrs["k"]), "scale": float(decoder.attrs["scale"])}

    def mean_map(self, layer: str) -> np.ndarray:
        """Mean activation map float32 [units, H, W] of a layer."""
        return self._array(MEAN_MAPS, layer)[...]

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise CatalogError(f"catalog {self.path} has no layer {layer!r}; its layers: {', '.join(self.layers)}.")


def _units(unit: int | slice | None) -> int | slice:
    return slice(None) if unit is None else unit if isinstance(unit, slice) else int(unit)
