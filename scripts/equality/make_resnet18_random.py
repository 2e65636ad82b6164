"""Write the random-weight resnet18 that scripts/equality/resnet18_random.toml reads.

torchvision builds a model without weights from torch's global RNG, which the pipeline does not
seed, so every Ray worker would draw other weights. This script seeds it once and saves the
state_dict: `python scripts/equality/make_resnet18_random.py [OUT]` (default:
data/equality/resnet18_random.pt at the repository root). It prints the file's sha256, which
must be the one written in the job file.
"""

from __future__ import annotations

import argparse
import hashlib
import io
from pathlib import Path

import torch
import torchvision

DEFAULT = Path(__file__).resolve().parents[2] / "data" / "equality" / "resnet18_random.pt"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", default=DEFAULT, help=f"weights file (default: {DEFAULT})")
    return parser


def random_resnet18_bytes() -> bytes:
    """torch.save of torchvision's resnet18 (6 classes) initialised after torch.manual_seed(0)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=6)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    data = random_resnet18_bytes()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.out.exists() or args.out.read_bytes() != data:
        args.out.write_bytes(data)
    print(f"{args.out}: sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
