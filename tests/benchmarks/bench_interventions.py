"""Cost of the interventions stage's work per (layer, concept) and per unit: the demo generator (trained weights when
data/demo holds them, else its random initialization) and the demo segmenter on `--images` latents, the curves for
n = 1..`--units` top units and `--draws` random sets, ablation and insertion; unit sets batched into forwards of
BATCH_IMAGES images, against one set per forward (the baseline), in the same run.

    .venv/bin/python tests/benchmarks/bench_interventions.py [--layer conv1] [--units 20] [--draws 3] [--images 16] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import pipeline.stages.interventions.edit as edit
from pipeline.demo.generator import WorldDecoder
from pipeline.inputs.batches import Preprocess
from pipeline.inputs.models import LayerInfo, ModelRecipe
from pipeline.stages.interventions.choose import Task

WEIGHTS = Path(__file__).resolve().parents[2] / "data" / "demo"


class LocalWorker:
    """The Worker protocol in this process: the model, a memo, the latents file."""

    def __init__(self, model: torch.nn.Module, prep: Preprocess) -> None:
        self.device, self.prep, self._model, self._memo = "cpu", prep, model, {}

    def model(self) -> torch.nn.Module:
        return self._model

    def memo(self, key, shared, build):
        if key not in self._memo:
            self._memo[key] = build(shared)
        return self._memo[key]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="conv1", choices=["conv1", "conv2", "conv3"])
    parser.add_argument("--units", type=int, default=20, help="the curves' largest n")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--images", type=int, default=16, help="present and absent images each")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = WorldDecoder()
    trained = (WEIGHTS / "world_decoder.pt").exists() and (WEIGHTS / "world_segmenter.pt").exists()
    if trained:
        model.load_state_dict(torch.load(WEIGHTS / "world_decoder.pt", weights_only=True))
    seg = ModelRecipe("factory", "pipeline.demo.segmenter:world_segmenter",
                      weights=(WEIGHTS / "world_segmenter.pt").read_bytes() if trained else None)
    shapes = {"conv1": (64, 8, 8), "conv2": (32, 16, 16), "conv3": (16, 32, 32)}
    info = LayerInfo(args.layer, shapes[args.layer], 1)
    n = min(args.units, info.units)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        latents = Path(tmp) / "latents.npy"
        np.save(latents, rng.standard_normal((2 * args.images, 32)).astype(np.float32))
        worker = LocalWorker(model.eval(), Preprocess(32, (0.5,) * 3, (0.5,) * 3, 64, str(latents)))
        names = [f"{i:06d}.png" for i in range(2 * args.images)]
        side = max(1, info.spatial[0] // 4)
        h = info.spatial[0] // 2 - side // 2
        task = Task(info, "sky-ish", "color", 1, tuple(range(n)),
                    tuple(tuple(int(u) for u in rng.permutation(info.units)[:n]) for _ in range(args.draws)),
                    tuple(names[: args.images]), tuple(names[args.images:]), (h, h, h + side, h + side), 3)
        sets = n * (1 + args.draws) * 2
        print(f"{'trained' if trained else 'untrained'} demo generator, layer {args.layer} ({info.units} units), "
              f"{sets} unit sets x {args.images} images, {args.threads} threads")
        results = {}
        for label, batch in (("one set per forward (baseline)", args.images), (f"{edit.BATCH_IMAGES} images per forward",
                                                                                edit.BATCH_IMAGES)):
            default, edit.BATCH_IMAGES = edit.BATCH_IMAGES, batch
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                outcome = edit.intervene(worker, task, seg, 29)
                times.append(time.perf_counter() - start)
            edit.BATCH_IMAGES = default
            best = min(times)
            results[label] = best
            print(f"{label:34s} {best:6.2f} s per (layer, concept), {1000 * best / sets:6.1f} ms per unit set, "
                  f"{1000 * best / n:7.1f} ms per unit of the curve (best of {args.repeat})")
        first, second = results.values()
        print(f"ratio baseline / batched: {first / second:.2f}; ablation at n = 1..3: {outcome.ablate_top[:3].tolist()} "
              f"of {outcome.ablate_before} pixels")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
