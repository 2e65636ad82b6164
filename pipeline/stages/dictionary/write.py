"""What the dictionary stage puts in the catalog: each layer's dictionary (decoder and encoder arrays),
dictionary_quality.parquet, and the manifest's dictionary section (with each firing-frequency histogram)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

import catalog_schema as cs
from pipeline.catalog.draft import ManifestPart
from pipeline.stages.dictionary.quality import FREQUENCY_BINS, summary
from pipeline.stages.dictionary.settings import DictionarySettings

if TYPE_CHECKING:
    from pipeline.catalog.draft import Draft
    from pipeline.stages.dictionary.results import DictionaryPart, DictionaryResult


def write_dictionary(draft: Draft, settings: DictionarySettings, part: DictionaryPart,
                     result: DictionaryResult) -> ManifestPart:
    rows: dict[str, list] = {name: [] for name in cs.TABLES["dictionary_quality"].names}
    layers = {}
    for name in dict.fromkeys(task.info.name for task in part.tasks):  # in model order, reused or trained
        d = result.dictionaries[name]
        draft.array(cs.DICTIONARY_DECODER, name, d.decoder, {"decoder_bias": d.decoder_bias.tolist(), "k": d.k,
                                                            "scale": d.scale})
        draft.array(cs.DICTIONARY_ENCODER, name, d.encoder, {"encoder_bias": d.encoder_bias.tolist()})
        if name in result.measured:  # reused: as the previous catalog measured it
            row = {key: result.measured[name][key] for key in rows}
            histogram = result.measured[name]["firing_histogram"]
        else:
            measured = result.quality[name]
            stats = summary(measured)
            row = {"layer": name, "features": d.features, "k": d.k, "channels": d.decoder.shape[1],
                   "steps": settings.steps, "vectors": settings.steps * part.batch, "eval_vectors": measured.vectors,
                   "stability": result.stability[name], **result.recovery[name],
                   **{key: stats[key] for key in ("explained_variance", "mean_l0", "dead_fraction", "dense_fraction")}}
            histogram = stats["firing_histogram"]
        for key in rows:
            rows[key].append(row[key])
        layers[name] = {**row, "firing_histogram": histogram}
    draft.table("dictionary_quality", rows)
    section = {"layers": layers, "histogram_log10_edges": [int(e) for e in FREQUENCY_BINS],
               "train_images": len(part.train_images), "eval_images": len(part.eval_images)}
    return ManifestPart({"dictionary": section}, asdict(settings))
