"""What a token layer's units do off the patch grid: each unit's activation at the prefix tokens (class,
registers, distillation), summarized for its page. Some units fire only there, where no heat map shows it."""

from __future__ import annotations

import numpy as np

from catalog_schema import Catalog

TOP = 5  # images listed per prefix token


def prefix_summaries(catalog: Catalog, layer: str) -> dict[int, list[dict]]:
    """Per unit, per prefix token (in token order): its mean and largest activation over the images, the share of
    images where it is positive, and the images where it is largest; {} for a layer without prefix tokens."""
    found = catalog.prefix_tokens(layer)
    if found is None:
        return {}
    values, ids = found
    paths = dict(zip(catalog.images()["image_id"], catalog.images()["path"]))
    values = values.astype(np.float32)
    out: dict[int, list[dict]] = {}
    for unit in range(values.shape[0]):
        tokens = []
        for token in range(values.shape[2]):
            v = values[unit, :, token]
            best = np.argsort(-v, kind="stable")[:TOP]
            tokens.append({"token": token, "mean": float(v.mean()), "max": float(v.max()),
                           "positive": float((v > 0).mean()),
                           "top": [(paths.get(int(ids[i]), str(int(ids[i]))), float(v[i])) for i in best]})
        out[unit] = tokens
    return out
