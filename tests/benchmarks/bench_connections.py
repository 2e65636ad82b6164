"""Cost of the connections stage's expanded weights per unit: torchvision resnet18 (random weights) at 224 px, the
pairs of consecutive residual stages, on this machine's CPUs (the stage runs one pair per model actor).

    .venv/bin/python tests/benchmarks/bench_connections.py [--size 224] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from pipeline.inputs.model_survey import survey_model
from pipeline.stages.connections.expanded import expanded_weights, linearized


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    model = torchvision.models.resnet18().eval()
    shape = (3, args.size, args.size)
    layers = survey_model(model, ["layer1", "layer2", "layer3", "layer4"], shape, explicit=True).layers
    flat = linearized(model)
    print("| earlier -> later | later units | seconds | ms per later unit |")
    print("|---|---|---|---|")
    for earlier, later in zip(layers, layers[1:]):
        point = torch.randn(*earlier.shape)
        start = time.perf_counter()
        weights = expanded_weights(flat, earlier, later, point, shape)
        seconds = time.perf_counter() - start
        assert weights.shape == (later.units, earlier.units)
        print(f"| {earlier.name} -> {later.name} | {later.units} | {seconds:.1f} | {1000 * seconds / later.units:.1f} |")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
