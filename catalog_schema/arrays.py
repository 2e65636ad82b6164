"""The Zarr v3 layout of a catalog: array names, dtypes and chunks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STORE = "arrays.zarr"
TARGET_CHUNK_BYTES = 4 << 20  # zarr guidance: chunks of at least ~1 MB


@dataclass(frozen=True)
class ArrayKind:
    group: str
    dtype: str
    doc: str

    def path(self, layer: str) -> str:
        return f"{self.group}/{layer}"

    def chunks(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Whole units per chunk, as many as fit the target size: a writer owns whole chunks by owning whole units."""
        per_unit = max(1, math.prod(shape[1:]) * np.dtype(self.dtype).itemsize)
        return (max(1, min(shape[0], TARGET_CHUNK_BYTES // per_unit)), *shape[1:])


EXAMPLES = ArrayKind("examples", "uint8", "[units, 2k, P, P, 3] receptive-field crops, top k then bottom k")
HEATMAPS = ArrayKind("heatmaps", "uint8", "[units, 2k, P, P] activation over each crop; 255 = the unit's max (top) or min (bottom)")
SPECTRUM = ArrayKind("spectrum", "uint8", "[units, Q*k, P, P, 3] receptive-field crops of the activation spectrum's "
                     "examples, in rank order (by quantile, then nearest first)")
FEATVIS = ArrayKind("featvis", "uint8", "[units, V, S, S, 3] feature visualizations")
MEAN_MAPS = ArrayKind("mean_maps", "float32", "[units, H, W] mean activation map over the data set (for ablation)")
PROJECTIONS = ArrayKind("projections", "uint8", "[units, k, 2, P, P, 3] deconvnet and guided-backprop projections of "
                        "each top example's maximum, cropped like the examples; 128 = no influence")
PROBES = ArrayKind("probes", "float32", "[units, m] mean activation on each probe image (attrs: image_ids, paths); "
                   "the fixed image sample `diff` correlates units on")
PREFIX_TOKENS = ArrayKind("prefix_tokens", "float16", "[units, images, P] each image's activation at the P tokens "
                          "before the patch grid (class, registers, distillation) of a token layer, images in the "
                          "order of attr image_ids; absent for a layer without prefix tokens")
DICTIONARY_DECODER = ArrayKind("dictionary_decoder", "float32", "[features, C] a layer's sparse dictionary: each feature's "
                               "direction in the layer's channels (unit rows); attrs: decoder_bias [C], k, scale")
DICTIONARY_ENCODER = ArrayKind("dictionary_encoder", "float32", "[features, C] the dictionary's encoder rows; attrs: "
                               "encoder_bias [features]. A position's codes: TopK_k(ReLU(encoder (scale x - "
                               "decoder_bias) + encoder_bias)); its reconstruction (codes decoder + decoder_bias) / scale")
GRADCAM = ArrayKind("gradcam", "float32", "[classes, top, h, w] Grad-CAM of each class's top images (class_examples "
                    "order) on the class_pages stage's layer, signed")
CLASS_IMAGES = ArrayKind("class_images", "uint8", "[classes, top, S, S, 3] each class's top images as the model saw them "
                         "(resized to S px)")
CONCEPT_VECTORS = ArrayKind("concept_vectors", "float32", "[concepts, C] IBD's concept vectors on the class_pages stage's "
                            "layer (unit rows; zero for a concept without one); attrs: names")
ATTRIBUTION = ArrayKind("attribution", "uint8", "[units, E, 3, P, P] each unit's top E examples' maps, cut like the "
                        "example crops: gradient saliency, Grad-CAM on the cataloged layer before (positive part; 0 for "
                        "the first layer), occlusion (positive part of the drop); 255 = the map's maximum")
EMPIRICAL_FIELDS = ArrayKind("empirical_fields", "uint8", "[units, P, P] the unit's empirical receptive field: its "
                             "examples' occlusion maps averaged in its theoretical field; 255 = the largest drop")
INTERVENTIONS = ArrayKind("interventions", "uint8", "[concepts, E, 4, S, S, 3] per concept (attrs: concepts, in this "
                          "order) E generated images: one where the concept is present, it with its top units ablated, "
                          "one where it is absent, it with them inserted (attrs: strip_units, each concept's two n)")
WEIGHTS = ArrayKind("weights", "uint8", "[units, kh, kw, 3] filters of a layer that convolves the input, 128 = 0")

ARRAYS = {kind.group: kind for kind in (EXAMPLES, HEATMAPS, SPECTRUM, FEATVIS, MEAN_MAPS, PROBES, PREFIX_TOKENS, PROJECTIONS,
                                           WEIGHTS, DICTIONARY_DECODER, DICTIONARY_ENCODER, GRADCAM, CLASS_IMAGES,
                                           CONCEPT_VECTORS, ATTRIBUTION, EMPIRICAL_FIELDS, INTERVENTIONS)}
