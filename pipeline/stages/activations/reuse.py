"""Reading a layer's activations results back from a previous catalog (re-analysis), exactly as they were written.

Tables are read with pyarrow, not pandas: a null must come back as a null (pandas turns a null string,
integer or boolean into a float NaN, which the schema refuses) and a NaN as a NaN.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from catalog_schema import Catalog
from catalog_schema.layout import ACTIVATION_COLUMNS
from catalog_schema.tables import from_table, rows_of_layer
from pipeline.stages.activations.compute import LayerResult, prefix_mean


def read_layer(previous: Catalog, units: pa.Table, layer: str) -> LayerResult:
    """One layer's units rows, examples, spectrum, mean map and probes."""
    rows = rows_of_layer(units, layer).sort_by("unit")
    columns = {c: from_table(rows, c) for c in ACTIVATION_COLUMNS}
    columns["nonfinite"] = np.array([v or 0 for v in columns["nonfinite"]], np.int64)  # null in older catalogs
    examples = previous.arrow("examples", filters=[("layer", "==", layer)])
    spectrum = previous.arrow("spectrum", filters=[("layer", "==", layer)])  # empty in a catalog without one
    probe, ids = previous.probes(layer)
    mean_map = previous.mean_map(layer)
    prefix, prefix_ids = previous.prefix_tokens(layer) or (np.zeros((len(mean_map), 0, 0), np.float16), np.zeros(0, np.int64))
    return LayerResult(columns, {c: from_table(examples, c) for c in examples.column_names}, mean_map,
                       probe, ids, {c: from_table(spectrum, c) for c in spectrum.column_names} if len(spectrum) else {},
                       prefix, prefix_ids, prefix_mean(prefix.transpose(1, 2, 0), prefix.shape[2], len(mean_map)))


def read_skipped(previous: Catalog) -> list[tuple[int, str]]:
    """The images the previous run could not read, with the reason."""
    images = previous.arrow("images")
    return [(i, why) for i, why in zip(images.column("image_id").to_pylist(), images.column("skip_reason").to_pylist())
            if why is not None]
