"""Benchmark: evaluations and seconds to the top-10 units by importance, for the TMC bandit variants against
plain truncated Monte-Carlo, the MSR Shapley and Banzhaf estimators' agreement with a long TMC reference, and the
suffix-only forward against the whole model.

Run by hand after `make demo` (it reads the demo job's model and images):

    .venv/bin/python tests/benchmarks/bench_shapley.py [--job jobs/demo.toml] [--layers conv1,conv2,conv3,conv4]
        [--reference 400] [--max-rounds 40] [--per-round 8] [--banzhaf 256,512,1024] [--keep 0.5,0.8] [--msr 1024,2048] [--msr-seeds 0,1,2] [--seeds 0,1,2] [--threads 2]
        [--cache /tmp/reference.npz]

In one process (no Ray), on the job's [stages.shapley] players (or --layers) and evaluation images:
1. a long plain-TMC run (`--reference` permutations, its own seed) gives the reference values and top 10
   (`--cache` keeps them between runs);
2. plain TMC and each bandit variant run rounds of `permutations_per_round` permutations; after each round
   the current top 10 (by mean) is compared with the reference; reported: evaluations and seconds until the
   precision first reaches 0.9 and stays there for the rest of the run, and the ratio to plain TMC (with
   `--seeds`, per seed and the mean over the seeds: a single run's figure varies by up to 2x between seeds);
3. Banzhaf with `--banzhaf` coalitions at each `--keep`: Spearman correlation of all values with the
   reference, top-10 precision, and its evaluations as a share of the reference's;
   then the same for the MSR Shapley estimator with `--msr` coalitions (the job's seed, or each of `--msr-seeds`);
4. the same evaluations timed with the model run whole (no cached prefix) instead of the suffix.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import pandas as pd

from pipeline.inputs.batches import Preprocess, iter_batches
from pipeline.inputs.images import list_images
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import build_model, recipe_from_config, resolve_layers
from pipeline.job.load import load_job
from pipeline.registry import STAGES
from pipeline.job.prepare import prepare_inputs
from pipeline.stages.shapley import estimator as sh
from pipeline.stages.shapley.ablation import Ablator, cache_eval_set, split_model, whole_model
from pipeline.stages.shapley.banzhaf import banzhaf_values
from pipeline.stages.shapley.msr import msr_values
from pipeline.stages.shapley.rounds import banzhaf_rounds, msr_rounds, permutations
from pipeline.stages.shapley.stage import ShapleyStage, eval_records, player_layers

VARIANTS = {  # name: (bandit, antithetic, bound, focus)
    "plain TMC": (False, False, "bernstein", 0),
    "antithetic TMC": (False, True, "bernstein", 0),
    "bandit (paper)": (True, False, "bernstein", 0),
    "bandit + antithetic": (True, True, "bernstein", 0),
    "bandit + normal bound": (True, False, "normal", 0),
    "bandit + antithetic + normal": (True, True, "normal", 0),
    "bandit + antithetic + focus 4": (True, True, "bernstein", 4),
    "bandit + antithetic + focus 8": (True, True, "bernstein", 8),
    "bandit + antithetic + focus 16": (True, True, "bernstein", 16),
    "bandit + antithetic + focus 32": (True, True, "bernstein", 32),
}


def setup(job_path: str, layers: str | None):
    job = load_job(job_path, STAGES)
    prepare_inputs(job)
    cfg = ShapleyStage().settings(job)
    if layers:
        cfg = replace(cfg, layers=tuple(layers.split(",")))
    model = build_model(recipe_from_config(job.model)).eval()
    shape = (len(job.model.mean), job.model.input_size, job.model.input_size)
    infos = survey_model(model, resolve_layers(model, job.model.layers), shape).layers
    players = list(player_layers(cfg, model, infos))
    shapes = {info.name: info.shape for info in infos}
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
    means = [(sums[name] / len(images.records)).reshape(shapes[name]).numpy() for name, _ in players]
    records = list(eval_records(images, cfg, job.seed))
    eval_groups = [records[s:s + prep.batch_size] for s in range(0, len(records), prep.batch_size)]
    labels = {r.image_id: r.label_index for r in records}
    pairs = [(b.inputs, torch.as_tensor([labels[int(i)] for i in b.image_ids]))
             for b in iter_batches(images.root, eval_groups, prep, [])]
    return job, cfg, model, players, means, pairs, len(images.classes)


def ablator(model, players, means, pairs, metric: str, classes: int, suffix: bool) -> Ablator:
    split = split_model(model, [name for name, _ in players]) if suffix else whole_model(model)
    return Ablator(split, players, means, cache_eval_set(split, pairs), metric, classes=classes)


def run(ab: Ablator, cfg, seed: int, rounds: int, variant: tuple, reference: np.ndarray | None):
    """Rounds as the stage plays them; per round (evaluations, seconds, precision of the top k)."""
    bandit, antithetic, bound, focus = variant
    players = ab.players
    v_full, v_none = ab.evaluate(np.stack([np.zeros(players, bool), np.ones(players, bool)]))
    settings = sh.WalkSettings(cfg.tolerance, cfg.patience)
    stats, trace, start, spent = sh.SampleStats.empty(players, len(v_full)), [], time.perf_counter(), ab.evaluations
    for r in range(rounds):
        chosen = sh.unsettled(stats, cfg.top_k, cfg.delta, bound, focus) if bandit else np.ones(players, bool)
        if not chosen.any():
            break
        for order in permutations(players, seed, r, cfg.permutations_per_round, antithetic):
            stats.add(sh.walk(ab.evaluate, order, chosen, v_full, v_none, settings))
        trace.append((ab.evaluations - spent, time.perf_counter() - start, precision(stats.mean[:, 0], reference, cfg.top_k)))
    return stats, trace


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


def precision(values: np.ndarray, reference: np.ndarray | None, k: int) -> float:
    if reference is None:
        return float("nan")
    top = np.argsort(-values, kind="stable")[:k]
    return len(set(top) & set(np.argsort(-reference, kind="stable")[:k])) / k


def first_settled(trace, goal: float = 0.9):
    """The first round from which the precision stays at or above `goal`."""
    for i in range(len(trace)):
        if all(p >= goal for _, _, p in trace[i:]):
            return trace[i]
    return None


def reference_values(ab: Ablator, cfg, permutations_: int, cache: str | None) -> tuple[np.ndarray, int, float]:
    """Per-player values [players, M] of a long plain TMC run (seed 12345), its evaluations and seconds."""
    if cache and Path(cache).exists():
        saved = np.load(cache)
        if saved["value"].shape[0] == ab.players and int(saved["permutations"]) == permutations_:
            return saved["value"], int(saved["evaluations"]), float(saved["seconds"])
    t0 = time.perf_counter()
    stats, trace = run(ab, cfg, 12345, max(1, permutations_ // cfg.permutations_per_round), VARIANTS["plain TMC"], None)
    seconds = time.perf_counter() - t0
    if cache:
        np.savez(cache, value=stats.mean, permutations=permutations_, evaluations=trace[-1][0], seconds=seconds)
    return stats.mean, trace[-1][0], seconds


def compare_banzhaf(ab: Ablator, cfg, seed: int, reference: np.ndarray, ref_evaluations: int, sizes, keeps) -> None:
    for keep in keeps if sizes else ():
        values = banzhaf_rounds(lambda items: [ab.evaluate(m) for m in items], ab.players,
                                replace(cfg, banzhaf_samples=max(sizes), banzhaf_keep=keep), seed)
        for m in sizes:
            e = banzhaf_values(values[:m], ab.players, seed, keep, 0, cfg.ci_delta)
            rho = spearman(e.value[:, 0], reference[:, 0])
            by_class = np.nanmean([spearman(e.value[:, c], reference[:, c]) for c in range(1, e.value.shape[1])])
            print(f"  Banzhaf keep {keep:.2f}, {m:5d} coalitions ({m / ref_evaluations:6.1%} of the reference's evaluations): "
                  f"Spearman {rho:.3f} (per class, mean {by_class:.3f}), top-{cfg.top_k} precision "
                  f"{precision(e.value[:, 0], reference[:, 0], cfg.top_k):.1f}")


def compare_msr(ab: Ablator, cfg, seed: int, reference: np.ndarray, ref_evaluations: int, sizes) -> None:
    if not sizes:
        return
    t0 = time.perf_counter()
    values = msr_rounds(lambda items: [ab.evaluate(m) for m in items], ab.players, replace(cfg, msr_samples=max(sizes)), seed)
    print(f"  MSR, seed {seed}: {max(sizes)} coalitions evaluated in {time.perf_counter() - t0:.0f} s")
    for m in sizes:
        t0 = time.perf_counter()
        e = msr_values(values[:m], ab.players, seed, 0, cfg.ci_delta)
        rho = spearman(e.value[:, 0], reference[:, 0])
        by_class = np.nanmean([spearman(e.value[:, c], reference[:, c]) for c in range(1, e.value.shape[1])])
        print(f"  MSR seed {seed}, {m:5d} coalitions ({m / ref_evaluations:6.1%} of the reference's evaluations): Spearman {rho:.3f} "
              f"(per class, mean {by_class:.3f}), top-{cfg.top_k} precision "
              f"{precision(e.value[:, 0], reference[:, 0], cfg.top_k):.1f}; estimate {time.perf_counter() - t0:.1f} s")


def time_forward(suffix: Ablator, whole: Ablator) -> None:
    masks = np.random.default_rng(0).random((32, suffix.players)) < 0.5
    timing = {}
    for name, ab in (("suffix", suffix), ("whole model", whole)):
        ab.evaluate(masks[:8])
        t0 = time.perf_counter()
        for s in range(0, len(masks), 8):
            ab.evaluate(masks[s:s + 8])
        timing[name] = (time.perf_counter() - t0) / len(masks)
        print(f"  {name:11s} {timing[name] * 1000:7.2f} ms per evaluation")
    print(f"  whole model / suffix: {timing['whole model'] / timing['suffix']:.2f}x the seconds per evaluation")
    np.testing.assert_allclose(suffix.evaluate(masks[:8]), whole.evaluate(masks[:8]), atol=1e-5)


def get_args_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--job", default="jobs/demo.toml")
    ap.add_argument("--layers", default=None, help="player layers, comma-separated (default: the job's)")
    ap.add_argument("--reference", type=int, default=400, help="permutations of the long plain-TMC run")
    ap.add_argument("--max-rounds", type=int, default=40)
    ap.add_argument("--per-round", type=int, default=0, help="permutations per round (default: the job's)")
    ap.add_argument("--banzhaf", default="256,512,1024", help="coalition counts for the Banzhaf comparison ('' for none)")
    ap.add_argument("--msr", default="1024,2048", help="coalition counts for the MSR comparison ('' for none)")
    ap.add_argument("--msr-seeds", default="", help="seeds of the MSR coalitions, comma-separated (default: the job's)")
    ap.add_argument("--keep", default="0.5", help="Banzhaf keep probabilities, comma-separated")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="TMC variants to run (names, comma-separated; '' for none)")
    ap.add_argument("--seeds", default="", help="permutation seeds of each TMC variant's runs, comma-separated (default: the job's)")
    ap.add_argument("--cache", default=None, help="an .npz file keeping the reference between runs")
    ap.add_argument("--threads", type=int, default=2)
    return ap


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    job, cfg, model, players, means, pairs, classes = setup(args.job, args.layers)
    reference_cfg = cfg
    if args.per_round:
        cfg = replace(cfg, permutations_per_round=args.per_round)
    suffix = ablator(model, players, means, pairs, cfg.metric, classes, suffix=True)
    reference, ref_evaluations, seconds = reference_values(suffix, reference_cfg, args.reference, args.cache)
    print(f"{suffix.players} players in {', '.join(n for n, _ in players)}, {suffix.eval_set.images} evaluation images, "
          f"{classes} classes, metric {cfg.metric}; reference: {args.reference} plain TMC permutations, "
          f"{ref_evaluations} evaluations ({seconds:.0f} s), top {cfg.top_k} = "
          f"{sorted(np.argsort(-reference[:, 0], kind='stable')[:cfg.top_k].tolist())}")
    settled = {}
    for name in [v for v in args.variants.split(",") if v]:
        seeds = [int(s) for s in args.seeds.split(",") if s] or [job.seed]
        hits, never = [], 0
        for seed in seeds:
            stats, trace = run(suffix, cfg, seed, args.max_rounds, VARIANTS[name], reference[:, 0])
            hit = first_settled(trace)
            final = trace[-1]
            hits.append(hit[0] if hit else final[0])  # never: at least the whole run's evaluations
            never += hit is None
            print(f"  {name:28s} seed {seed}: top-{cfg.top_k} precision >= 0.9 from "
                  + (f"{hit[0]:6d} evaluations, {hit[1]:6.1f} s" if hit else "never")
                  + f"  (run: {len(trace)} rounds, {final[0]} evaluations, {final[1]:.1f} s, final precision {final[2]:.1f},"
                  f" Spearman {spearman(stats.mean[:, 0], reference[:, 0]):.3f})", flush=True)
        settled[name] = float(np.mean(hits))
        ratio = f", {settled[name] / settled['plain TMC']:.2f}x plain TMC's" if "plain TMC" in settled else ""
        print(f"  {name:28s} mean over {len(seeds)} seeds: {'at least ' if never else ''}{settled[name]:.0f} evaluations{ratio}"
              + (f" ({never} never settled: counted at the run's evaluations)" if never else ""), flush=True)
    compare_banzhaf(suffix, cfg, job.seed, reference, ref_evaluations, [int(m) for m in args.banzhaf.split(",") if m],
                    [float(k) for k in args.keep.split(",")])
    for seed in [int(s) for s in args.msr_seeds.split(",") if s] or [job.seed]:
        compare_msr(suffix, cfg, seed, reference, ref_evaluations, [int(m) for m in args.msr.split(",") if m])
    time_forward(suffix, ablator(model, players, means, pairs, cfg.metric, classes, suffix=False))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
