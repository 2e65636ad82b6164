"""The on-disk contract of a neuron catalog: table schemas, Zarr layout, manifest, and the reader."""

from catalog_schema.arrays import (ARRAYS, INTERVENTIONS, ATTRIBUTION, CLASS_IMAGES, CONCEPT_VECTORS, DICTIONARY_DECODER, DICTIONARY_ENCODER, EXAMPLES,
                                   EMPIRICAL_FIELDS, FEATVIS, GRADCAM, HEATMAPS, MEAN_MAPS, PREFIX_TOKENS, PROBES, PROJECTIONS, SPECTRUM, STORE,
                                   WEIGHTS, ArrayKind)
from catalog_schema.manifest import LATEST, MANIFEST, SCHEMA_VERSION, CatalogError, read_manifest
from catalog_schema.reader import Catalog
from catalog_schema.tables import TABLES, to_table

__all__ = [
    "ARRAYS", "ATTRIBUTION", "EMPIRICAL_FIELDS", "CLASS_IMAGES", "CONCEPT_VECTORS", "GRADCAM", "DICTIONARY_DECODER", "DICTIONARY_ENCODER", "EXAMPLES", "FEATVIS", "HEATMAPS", "INTERVENTIONS", "MEAN_MAPS", "PREFIX_TOKENS", "PROBES", "PROJECTIONS", "SPECTRUM", "STORE", "WEIGHTS", "ArrayKind",
    "LATEST", "MANIFEST", "SCHEMA_VERSION", "CatalogError", "read_manifest", "Catalog", "TABLES", "to_table",
]
