"""Benchmark: feature visualization of a vision transformer's token units, in units per second.

Run by hand (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_featvis_vit.py [--model torchvision:vit_b_16] [--layer encoder.layers.encoder_layer_11.mlp.1] [--units 4] [--steps 64]
    .venv/bin/python tests/benchmarks/bench_featvis_vit.py --model timm:vit_tiny_patch16_224 --layer blocks.11.mlp.act --units 8 --steps 64

The model is built with random weights (nothing is downloaded) and surveyed as a run surveys it: the layer
is read units first (its class token apart), the objective is the unit's mean over the 14 x 14 patch grid,
and every transformed image is resized to the model's fixed 224 px input (its position embeddings). One
optimization batch holds every unit's positive and negative image; featvis runs `--steps` steps and stores
the images. Printed: seconds, units per second, and each unit's reached objective against the same
objective on the starting (noise) image.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import torch

from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import ModelRecipe, build_model, resolve_layers
from pipeline.stages.featvis import optimize as fv
from pipeline.stages.featvis.settings import FeatvisSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="torchvision:vit_b_16", help="torchvision:NAME or timm:NAME (random weights)")
    ap.add_argument("--layer", default="encoder.layers.encoder_layer_11.mlp.1")
    ap.add_argument("--units", type=int, default=4)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--size", type=int, default=224, help="the model's input size")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    kind, name = args.model.split(":")
    model = build_model(ModelRecipe(kind, name, 1000)).eval()
    (info,) = survey_model(model, resolve_layers(model, (args.layer,)), (3, args.size, args.size)).layers
    units = list(range(args.units))
    settings = FeatvisSettings(size=args.size, input_size=args.size, objective="channel", batch_units=2 * len(units))
    start = fv.visualize(model, info.name, 0, units, replace(settings, steps=1, polish=0, transforms="none"), seed=0,
                         info=info)
    t0 = time.perf_counter()
    out = fv.visualize(model, info.name, 0, units, replace(settings, steps=args.steps), seed=0, info=info)
    took = time.perf_counter() - t0
    print(f"{args.model} {info.name} ({info.layout}, {info.units} units, grid {info.spatial}, {info.prefix} prefix "
          f"token(s)), {args.units} units x 2 views, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"  {took:.1f}s: {args.units / took:.3f} units/s ({took / args.units:.1f}s per unit)")
    print(f"  reached objective: mean {np.mean(out.objective):.3f} (after one step from noise: {np.mean(start.objective):.3f})")


if __name__ == "__main__":
    main()
