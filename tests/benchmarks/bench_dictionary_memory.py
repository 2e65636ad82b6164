"""Benchmark: the dictionary stage's memory on a large layer, streamed: resnet18's layer4 (random weights) at
224 px, every position of every image one vector of 512 (49 per image), trained as the stage trains it
(`layer_vectors` -> `shuffled` -> `sae.train`, the buffer and batch of the stage's defaults).

    .venv/bin/python tests/benchmarks/bench_dictionary_memory.py [--images 10000] [--steps 120] [--buffer 65536]

The images are random tensors made batch by batch (decoding is not what is measured); 10,000 images are 490,000
vectors, one epoch at 120 steps of 4096. Printed: seconds, vectors seen, and the process's peak resident memory
against what holding every vector would take.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
import torchvision

from pipeline.inputs.batches import Batch
from pipeline.inputs.model_survey import survey_model
from pipeline.stages.dictionary.sae import TrainSettings, train
from pipeline.stages.dictionary.vectors import layer_vectors, shuffled

BATCH_IMAGES = 64


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--buffer", type=int, default=65536)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    (info,) = survey_model(model, ["layer4"], (3, 224, 224)).layers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def images():
        gen = torch.Generator().manual_seed(1)
        while True:  # epochs, as the stage's
            for start in range(0, args.images, BATCH_IMAGES):
                n = min(BATCH_IMAGES, args.images - start)
                yield Batch(np.zeros(0), torch.randn(n, 3, 224, 224, generator=gen), np.arange(start, start + n))

    t0 = time.perf_counter()
    vectors = layer_vectors(model, info, images())
    try:
        dictionary = train(shuffled(vectors, args.buffer, args.batch, 0), TrainSettings(8 * 512, 32, args.steps))
    finally:
        vectors.close()
    spent = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seen = args.steps * args.batch
    every = args.images * 49 * 512 * 4 / 2**20
    print(f"resnet18 layer4 at 224 px, {args.images} images ({args.images * 49:,} vectors of 512), dictionary of "
          f"{dictionary.features} features, k = 32, {args.steps} steps of {args.batch}, buffer {args.buffer:,}, "
          f"{torch.get_num_threads()} threads")
    print(f"  {spent:.0f} s, {seen:,} vectors seen; peak RSS {peak:.0f} MB ({before:.0f} MB before training); "
          f"all the vectors at once would be {every:.0f} MB")


if __name__ == "__main__":
    main()
