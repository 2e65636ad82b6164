"""Cost of the attribution stage per top example: torchvision resnet18 (random weights) at 224 px, a unit of layer3's
maximum explained by saliency and Grad-CAM (on layer2) in one backward pass per batch of images, by occlusion (a
28-pixel square every 14 pixels: one forward per position, shared by every unit whose example the image is), and
the sanity check's second model; on this machine's CPUs.

    .venv/bin/python tests/benchmarks/bench_attribution.py [--size 224] [--threads 2] [--images 6]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from pipeline.inputs.model_survey import survey_model
from pipeline.stages.attribution.gradients import gradient_maps
from pipeline.stages.attribution.occlusion import occlusion_maps, occluder_positions
from pipeline.stages.attribution.sanity import randomized
from pipeline.stages.featvis.projections import ProjectionRequest


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--occluder", type=int, default=28)
    parser.add_argument("--stride", type=int, default=14)
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet18().eval()
    layer2, layer3 = survey_model(model, ["layer2", "layer3"], (3, args.size, args.size), explicit=True).layers
    x = torch.randn(args.images, 3, args.size, args.size)
    box = (0, 0, args.size, args.size)
    requests = [ProjectionRequest("layer3", i, 0, i, 7, 7, box) for i in range(args.images)]
    gradient_maps(model, [layer3], {"layer3": layer2}, x[:1], [0], requests[:1])  # warm up
    start = time.perf_counter()
    gradient_maps(model, [layer3], {"layer3": layer2}, x, list(range(args.images)), requests)
    grads = (time.perf_counter() - start) / args.images
    print(f"saliency + Grad-CAM: {1000 * grads:.0f} ms per example")
    positions = len(occluder_positions((args.size, args.size), args.occluder, args.stride))
    start = time.perf_counter()
    occlusion_maps(model, [layer3], x[0], requests[:1], args.occluder, args.stride)
    occluded = time.perf_counter() - start
    print(f"occlusion ({args.occluder} px every {args.stride} px: {positions} positions): {occluded:.1f} s per image, "
          "shared by every unit whose top example it is")
    start = time.perf_counter()
    random = randomized(model, seed=0)
    gradient_maps(random, [layer3], {"layer3": layer2}, x, list(range(args.images)), requests)
    print(f"sanity check's randomized model: {time.perf_counter() - start:.2f} s to build and map {args.images} examples")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
