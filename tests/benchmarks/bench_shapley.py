"""Benchmark: evaluations and seconds to find the top-10 Shapley units of the demo model, with the
bandit vs plain truncated Monte-Carlo, and with vs without the suffix-only forward.

Run by hand after `make demo` (it reads the demo job's model and images):

    .venv/bin/python tests/benchmarks/bench_shapley.py [--job jobs/demo.toml] [--reference 200] [--max-rounds 40]
        [--threads 2]

In one process (no Ray), on the job's [stages.shapley] players and evaluation images:
1. a long plain-TMC run (`--reference` permutations) gives the reference top 10;
2. plain TMC and the bandit each run rounds of `permutations_per_round` permutations; after each
   round the current top 10 (by mean) is compared with the reference; reported: evaluations and
   seconds until the precision first reaches 0.9 and stays there for the rest of the run;
3. the same evaluations timed with the model run whole (no cached prefix) instead of the suffix.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pipeline.inputs.batches import Preprocess, iter_batches
from pipeline.job.load import load_job
from pipeline.inputs.images import list_images
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import build_model, recipe_from_config, resolve_layers
from pipeline.stages.shapley.stage import ShapleyStage, eval_records, player_layers
from pipeline.job.prepare import prepare_inputs
from pipeline.stages.shapley import estimator as sh
from pipeline.stages.shapley.ablation import Ablator, cache_eval_set, split_model, whole_model


def setup(job_path: str):
    job = load_job(job_path)
    prepare_inputs(job)
    cfg = ShapleyStage().settings(job)
    model = build_model(recipe_from_config(job.model)).eval()
    shape = (len(job.model.mean), job.model.input_size, job.model.input_size)
    layers = survey_model(model, resolve_layers(model, job.model.layers), shape).layers
    players = list(player_layers(cfg, model, layers))
    images = list_images(job.data.images, job.data.limit, job.seed)
    prep = Preprocess(job.model.input_size, job.model.mean, job.model.std, job.data.batch_size)
    groups = [list(images.records[s:s + prep.batch_size]) for s in range(0, len(images.records), prep.batch_size)]
    sums = {name: 0.0 for name, _ in players}
    modules = dict(model.named_modules())
    hooks = [modules[name].register_forward_hook(lambda m, i, o, name=name: sums.__setitem__(name, sums[name] + o.sum(0)))
             for name, _ in players]
    with torch.inference_mode():
        for batch in iter_batches(images.root, groups, prep, []):
            model(batch.inputs)
    for h in hooks:
        h.remove()
    means = [(sums[name] / len(images.records)).numpy() for name, _ in players]
    records = list(eval_records(images, cfg, job.seed))
    eval_groups = [records[s:s + prep.batch_size] for s in range(0, len(records), prep.batch_size)]
    labels = {r.image_id: r.label_index for r in records}
    pairs = [(b.inputs, torch.as_tensor([labels[int(i)] for i in b.image_ids]))
             for b in iter_batches(images.root, eval_groups, prep, [])]
    return job, cfg, model, players, means, pairs


def ablator(model, players, means, pairs, metric: str, suffix: bool) -> Ablator:
    split = split_model(model, [name for name, _ in players]) if suffix else whole_model(model)
    return Ablator(split, players, means, cache_eval_set(split, pairs), metric)


def run(ab: Ablator, cfg, seed: int, rounds: int, bandit: bool, reference: np.ndarray | None):
    """Rounds as the runner plays them; per round (evaluations, seconds, precision of the top 10)."""
    players = ab.players
    v_full, v_none = ab.evaluate(np.stack([np.zeros(players, bool), np.ones(players, bool)]))
    settings = sh.WalkSettings(cfg.tolerance, cfg.patience)
    stats, trace, start, spent = sh.SampleStats.empty(players), [], time.perf_counter(), ab.evaluations
    for r in range(1, rounds + 1):
        chosen = sh.unsettled(stats, cfg.top_k, cfg.delta) if bandit else np.ones(players, bool)
        if not chosen.any():
            break
        for i in range(cfg.permutations_per_round):
            order = np.random.default_rng([seed, r, i]).permutation(players)
            stats.add(sh.walk(ab.evaluate, order, chosen, v_full, v_none, settings))
        top = np.argsort(-stats.mean, kind="stable")[:cfg.top_k]
        precision = len(set(top) & set(reference)) / cfg.top_k if reference is not None else float("nan")
        trace.append((ab.evaluations - spent, time.perf_counter() - start, precision))
    return stats, trace


def first_settled(trace, goal: float = 0.9):
    """The first round from which the precision stays at or above `goal`."""
    for i in range(len(trace)):
        if all(p >= goal for _, _, p in trace[i:]):
            return trace[i]
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default="jobs/demo.toml")
    ap.add_argument("--reference", type=int, default=200, help="permutations of the long plain-TMC run")
    ap.add_argument("--max-rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    job, cfg, model, players, means, pairs = setup(args.job)
    suffix = ablator(model, players, means, pairs, cfg.metric, suffix=True)
    per_round = cfg.permutations_per_round
    t0 = time.perf_counter()
    ref_stats, _ = run(suffix, cfg, 12345, max(1, args.reference // per_round), False, None)
    reference = np.argsort(-ref_stats.mean, kind="stable")[:cfg.top_k]
    print(f"{sum(u for _, u in players)} players in {', '.join(n for n, _ in players)}, {suffix.eval_set.images} "
          f"evaluation images, metric {cfg.metric}; reference: {ref_stats.permutations} plain TMC permutations "
          f"({time.perf_counter() - t0:.0f} s), top {cfg.top_k} = {sorted(reference.tolist())}")
    results = {}
    for name, bandit in (("plain TMC", False), ("bandit", True)):
        stats, trace = run(suffix, cfg, job.seed, args.max_rounds, bandit, reference)
        hit = first_settled(trace)
        results[name] = hit
        final = trace[-1]
        print(f"  {name:10s} top-{cfg.top_k} precision >= 0.9 from "
              + (f"{hit[0]:6d} evaluations, {hit[1]:6.1f} s" if hit else "never")
              + f"  (run: {len(trace)} rounds, {final[0]} evaluations, {final[1]:.1f} s, final precision {final[2]:.1f})")
    if results["plain TMC"] and results["bandit"]:
        print(f"  bandit / plain TMC: {results['bandit'][0] / results['plain TMC'][0]:.2f}x the evaluations, "
              f"{results['bandit'][1] / results['plain TMC'][1]:.2f}x the seconds")
    whole = ablator(model, players, means, pairs, cfg.metric, suffix=False)
    masks = np.random.default_rng(0).random((64, suffix.players)) < 0.5
    timing = {}
    for name, ab in (("suffix", suffix), ("whole model", whole)):
        ab.evaluate(masks[:8])
        t0 = time.perf_counter()
        for s in range(0, len(masks), 8):
            ab.evaluate(masks[s:s + 8])
        timing[name] = (time.perf_counter() - t0) / len(masks)
        print(f"  {name:11s} {timing[name] * 1000:7.2f} ms per evaluation")
    print(f"  whole model / suffix: {timing['whole model'] / timing['suffix']:.2f}x the seconds per evaluation")
    np.testing.assert_allclose(suffix.evaluate(masks[:8]), whole.evaluate(masks[:8]), atol=1e-6)


if __name__ == "__main__":
    main()
