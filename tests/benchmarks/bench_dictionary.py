"""Benchmark: the dictionary stage's TopK SAE against `overcomplete`'s own TopKSAE and `train_sae` loop, on the
same vectors, with the same size, k, batch, steps and learning rate.

`overcomplete` is not a dependency: install it beside the project's packages, e.g.

    .venv/bin/pip install --target /tmp/ocpkgs --no-deps overcomplete==0.3.0 einops
    .venv/bin/pip install --target /tmp/ocpkgs scikit-learn opencv-python-headless scikit-image "matplotlib<3.9"
    PYTHONPATH=/tmp/ocpkgs .venv/bin/python tests/benchmarks/bench_dictionary.py [--channels 128] [--planted 1024] [--features 1024] [--k 8] [--epochs 10]

(its package imports matplotlib's `cm.get_cmap`, removed in matplotlib 3.9: hence the pin; nothing of it is
patched). The vectors are planted superposition: `--planted` random unit directions in `--channels` channels,
4 active per vector at magnitudes 1-2 (65,536 training vectors, 16,384 held out). Each trainer runs in its own
process (for its peak memory), `--epochs` epochs of batches of 1024 in the same seeded order, Adam; overcomplete
with its defaults (a Linear + BatchNorm encoder, `top_k_auxiliary_loss`, gradient clipping at 1). Printed per
trainer: seconds, peak resident memory, explained variance on the held-out vectors after each epoch, and the
epoch at which overcomplete first reaches the explained variance ours ends with.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

TRAIN, HELD, BATCH, ACTIVE = 65_536, 16_384, 1024, 4


def vectors(channels: int, planted: int, count: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(planted, channels, generator=gen)
    directions /= directions.norm(dim=1, keepdim=True)
    gen = torch.Generator().manual_seed(seed)
    which = torch.randint(0, planted, (count, ACTIVE), generator=gen)
    magnitude = 1 + torch.rand(count, ACTIVE, generator=gen)
    return (magnitude[:, :, None] * directions[which]).sum(dim=1)


def explained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    return float(1 - (x - x_hat).square().sum() / (x - x.mean(dim=0)).square().sum())


def batches(x: torch.Tensor, epoch: int) -> list[torch.Tensor]:
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    return [x[order[s:s + BATCH]] for s in range(0, len(x), BATCH)]


def ours(args, x, held) -> list[tuple[float, float]]:
    """[(seconds, held-out explained variance)] after the last epoch (sae.train runs every step in one call)."""
    from pipeline.stages.dictionary.sae import TrainSettings, train

    steps = len(x) // BATCH
    t0 = time.perf_counter()
    dictionary = train((b for epoch in range(args.epochs) for b in batches(x, epoch)),
                       TrainSettings(args.features, args.k, steps * args.epochs, args.lr, seed=0))
    spent = time.perf_counter() - t0
    w = dictionary.tensors()
    with torch.no_grad():
        return [(spent, explained(held, w.decode(w.encode(held))))]


def theirs(args, x, held) -> list[tuple[float, float]]:
    """[(seconds of training so far, held-out explained variance)] after each epoch."""
    from overcomplete.sae import TopKSAE, train_sae
    from overcomplete.sae.losses import top_k_auxiliary_loss

    torch.manual_seed(0)
    model = TopKSAE(args.channels, nb_concepts=args.features, top_k=args.k)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve, t0 = [], time.perf_counter()
    for epoch in range(args.epochs):
        train_sae(model, batches(x, epoch), top_k_auxiliary_loss, optimizer, nb_epochs=1, monitoring=0)
        spent = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():
            curve.append((spent, explained(held, model(held)[2])))
        t0 += time.perf_counter() - t0 - spent  # evaluation is not training time
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--channels", type=int, default=128)
    ap.add_argument("--planted", type=int, default=1024)
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", choices=("ours", "overcomplete"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        torch.set_num_threads(args.threads)
        x, held = vectors(args.channels, args.planted, TRAIN, 1), vectors(args.channels, args.planted, HELD, 2)
        curve = (ours if args.only == "ours" else theirs)(args, x, held)
        print(json.dumps({"curve": curve, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
        return
    results = {}
    for who in ("ours", "overcomplete"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", who], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"{who} failed:\n{out.stderr[-2000:]}")
        results[who] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.channels} channels, {args.planted} planted directions ({ACTIVE} active), {args.features} features, "
          f"k = {args.k}, {args.epochs} epochs of {TRAIN // BATCH} batches of {BATCH}, lr {args.lr}, {args.threads} threads")
    for who, r in results.items():
        seconds, final = r["curve"][-1]
        print(f"  {who:12s} {seconds:6.1f} s, peak RSS {r['peak_mb']:.0f} MB, held-out explained variance {final:.4f}")
    target = results["ours"]["curve"][-1][1]
    reached = [i + 1 for i, (_, ev) in enumerate(results["overcomplete"]["curve"]) if ev >= target]
    print(f"  overcomplete per epoch: {', '.join(f'{ev:.3f}' for _, ev in results['overcomplete']['curve'])}; "
          + (f"reaches ours ({target:.4f}) at epoch {reached[0]}" if reached else f"never reaches ours ({target:.4f})"))


if __name__ == "__main__":
    main()
