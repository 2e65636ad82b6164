"""The table of a generator's causal tests (the interventions stage, GAN Dissection's ablation and insertion)."""

from __future__ import annotations

import pyarrow as pa

from catalog_schema.columns import LAYER, column

GENERATOR_INTERVENTIONS_DOC = ("interventions (a generator): per concept, its pixels after switching off (ablate) or on "
                               "(insert) its top n units by IoU, and n random units.")

GENERATOR_INTERVENTIONS = pa.schema([
    column("layer", pa.string(), LAYER, required=True),
    column("concept", pa.string(), "the concept (the segmenter's label) whose pixels are counted", required=True),
    column("category", pa.string(), "its category"),
    column("intervention", pa.string(), "'ablate': the units set to 0 everywhere, on images where the concept is "
                                        "present; 'insert': the units set to their concept-present mean in a square "
                                        "of the grid, on images where it is absent", required=True),
    column("units_from", pa.string(), "'top': the concept's units ranked by IoU; 'random': seeded random units "
                                      "(values averaged over `draws` sets)", required=True),
    column("n", pa.int32(), "how many units were switched off or on", required=True),
    column("units", pa.list_(pa.int32()), "the units (for 'random', the first draw's)"),
    column("draws", pa.int32(), "unit sets averaged: 1 for 'top'"),
    column("images", pa.int32(), "images edited"),
    column("pixels_before", pa.int64(), "the concept's pixels in those images, unedited (segmenter's resolution)"),
    column("pixels_after", pa.float64(), "the concept's pixels after the edit (mean over the draws)"),
    column("fraction", pa.float32(), "ablate: the share of the concept's pixels removed, (before - after) / before; "
                                     "insert: the pixels gained, (after - before), per pixel of the inserted square"),
])
