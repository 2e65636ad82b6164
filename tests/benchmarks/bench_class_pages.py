"""Cost of the class_pages stage per image and per class: torchvision resnet18 (random weights) at 224 px, Grad-CAM on
layer4 for a batch of top images, IBD's concept sums on layer4 per concept image (Broden-like masks), and the greedy
decomposition of 1,000 class vectors over 1,200 concept vectors of 512 channels, on this machine's CPUs.

    .venv/bin/python tests/benchmarks/bench_class_pages.py [--size 224] [--threads 2] [--batch 6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torchvision

from pipeline.inputs.layer_taps import tapped
from pipeline.inputs.model_survey import survey_model
from pipeline.stages.class_pages.gradcam import grad_cam
from pipeline.stages.class_pages.ibd import ConceptSums, concept_vectors, decompose
from pipeline.stages.dissection.concept_masks import LabelSpace

CONCEPTS, CLASSES, STEPS = 1200, 1000, 7


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=6, help="top images per class (one Grad-CAM batch)")
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet18().eval()
    layer = survey_model(model, ["layer4"], (3, args.size, args.size), explicit=True).layers[0]
    x = torch.randn(args.batch, 3, args.size, args.size)
    grad_cam(model, layer, x[:1], torch.zeros(1, dtype=torch.long))  # warm up
    start = time.perf_counter()
    grad_cam(model, layer, x, torch.arange(args.batch))
    per_class = time.perf_counter() - start
    print(f"Grad-CAM on layer4: {1000 * per_class / args.batch:.0f} ms per image, {per_class:.2f} s per class of "
          f"{args.batch} top images")

    rng = np.random.default_rng(0)
    space = LabelSpace.from_labels(np.arange(1, CONCEPTS + 1), ["object"] * CONCEPTS, ["object"])
    masks = [{"object": rng.integers(0, CONCEPTS + 1, size=(2, 112, 112), dtype=np.int32)} for _ in range(args.batch)]
    sums = ConceptSums.empty(CONCEPTS, layer.units)
    with torch.inference_mode(), tapped(model, [layer], lambda _n, out: features.append(out.numpy())) as run:
        features: list[np.ndarray] = []
        start = time.perf_counter()
        run(x)
        forward = time.perf_counter() - start
    start = time.perf_counter()
    for f, m in zip(features[0], masks):
        sums.add(f, m, {}, space)
    adding = time.perf_counter() - start
    print(f"IBD concept sums on layer4: {1000 * (forward + adding) / args.batch:.0f} ms per concept image "
          f"({1000 * adding / args.batch:.1f} ms of it adding {CONCEPTS} concepts' masks)")

    assert np.isfinite(concept_vectors(sums)[0]).all()
    vectors = rng.normal(size=(CONCEPTS, layer.units))  # as many concepts as Broden's, each with a vector
    vectors, valid = vectors / np.linalg.norm(vectors, axis=1, keepdims=True), np.ones(CONCEPTS, bool)
    weights = rng.normal(size=(CLASSES, layer.units))
    start = time.perf_counter()
    for w in weights:
        decompose(w, vectors, valid, STEPS)
    each = (time.perf_counter() - start) / CLASSES
    print(f"IBD decomposition ({STEPS} steps, {int(valid.sum())} concept vectors of {layer.units}): {1000 * each:.0f} ms "
          f"per class, {CLASSES * each:.0f} s for {CLASSES} classes")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
