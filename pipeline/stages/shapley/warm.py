"""Warm start after retraining: the TMC bandit begins from the previous catalog's samples.

Units are matched layer by layer as `diff` matches them (one-to-one by the correlation of their probe
activations). A matched unit's previous samples (their count, mean, spread and standard deviation, per
column) are carried at weight w = corr * w_V, where w_V = 1 - |V_new(all) - V_old(all)| / |V_old(all) -
V_old(none)| (clipped to [0, 1]) shrinks with the change of the model's metric, so a model that changed
more keeps less of its past. Units matched with a correlation under MIN_CORR start cold. The bandit then
samples only what is still unsettled; the manifest says how many samples were carried and what they cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from catalog_schema import Catalog
from pipeline.catalog.diff import correlate, match_units
from pipeline.stages.shapley.estimator import SampleStats

MIN_CORR = 0.5  # matched units below this activation correlation are not carried over


@dataclass(frozen=True)
class Prior:
    """What a warm start needs from the previous catalog (read before this run writes anything)."""

    run_id: str
    metric: str
    target_class: int
    classes: tuple[str, ...]
    v_all: float
    v_none: float
    cost: float  # the previous run's TMC evaluations per marginal sample
    samples: dict[tuple[str, int], tuple[float, np.ndarray, np.ndarray, np.ndarray]]  # (count, mean, std, range) [M]
    probes: dict[str, tuple[np.ndarray, list[str]]]  # layer -> (activations [units, m], the probe images' paths)


def read_prior(previous: Catalog, layers: list[str]) -> Prior | None:
    """The previous catalog's TMC samples and probes, or None when it has none to start from."""
    info, settings = previous.manifest.get("shapley"), previous.manifest.get("settings", {}).get("shapley")
    table = previous.arrow("shapley").to_pandas()  # with the current columns: an older catalog's are null
    if not info or not settings or table.empty or "tmc" not in info.get("estimators", []) or table["sample_std"].isna().all():
        return None
    classes = tuple(info.get("classes", []))
    by_class = previous.arrow("importance_by_class").to_pandas()
    by_class = by_class[by_class["estimator"] == "tmc"].set_index(["layer", "unit", "class"])
    samples = {}
    for r in table.itertuples():
        rows = [(r.value, r.sample_std, r.sample_range)]
        rows += [tuple(by_class.loc[(r.layer, r.unit, c), ["value", "sample_std", "sample_range"]])
                 if (r.layer, r.unit, c) in by_class.index else (np.nan,) * 3 for c in range(len(classes))]
        mean, std, spread = (np.array(col, float) for col in zip(*rows))
        samples[(r.layer, int(r.unit))] = (float(r.samples), mean, std, spread)
    paths = dict(zip(previous.images()["image_id"], previous.images()["path"]))
    probes = {}
    for layer in layers:
        if layer in previous.layers and previous.has_array("probes", layer):
            values, ids = previous.probes(layer)
            probes[layer] = (values, [paths[int(i)] for i in ids])
    total = sum(n for n, *_ in samples.values())
    return Prior(previous.manifest["run_id"], settings["metric"], settings["target_class"], classes, info["v_all"],
                 info["v_none"], info.get("evaluations", 0) / max(total, 1), samples, probes)


def warm_stats(prior: Prior, players: list[tuple[str, int]], probes: dict[str, tuple[np.ndarray, list[str]]],
               v_all: float, columns: int) -> tuple[SampleStats, dict] | None:
    """Sample statistics to start the bandit from, and what the manifest says of them; None when nothing carries."""
    span = abs(prior.v_all - prior.v_none)
    w_v = float(np.clip(1 - abs(v_all - prior.v_all) / span, 0, 1)) if span > 0 else 0.0
    stats = SampleStats.empty(sum(n for _, n in players), columns)
    carried, offset = 0, 0
    for layer, units in players:
        corr, _ = correlate(prior.probes[layer], probes[layer]) if layer in prior.probes and layer in probes else (None, 0)
        if corr is not None:
            pairs, _ = match_units(corr, "correlation", corr.shape[0], units)
            for old, new in pairs:
                if old is None or new is None or (layer, old) not in prior.samples or not corr[old, new] >= MIN_CORR:
                    continue
                count, mean, std, spread = prior.samples[(layer, old)]
                if len(mean) != columns or not np.isfinite(mean).all() or w_v * count * corr[old, new] <= 1:
                    continue
                _carry(stats, offset + new, w_v * float(corr[old, new]) * count, mean, np.nan_to_num(std),
                       np.nan_to_num(spread))
                carried += 1
        offset += units
    if not carried:
        return None
    weight = float(stats.count.sum())
    return stats, {"previous_run_id": prior.run_id, "units_carried": carried, "weight_of_v": round(w_v, 6),
                   "samples_carried": round(weight, 3), "evaluations_saved": int(round(weight * prior.cost)),
                   "min_corr": MIN_CORR}


def _carry(stats: SampleStats, i: int, n: float, mean: np.ndarray, std: np.ndarray, spread: np.ndarray) -> None:
    """Player i starts with n (weighted) samples of that mean, standard deviation and range."""
    stats.count[i] = n
    stats.total[i] = n * mean
    stats.squares[i] = (n - 1) * std ** 2 + n * mean ** 2
    stats.low[i], stats.high[i] = mean - spread / 2, mean + spread / 2
