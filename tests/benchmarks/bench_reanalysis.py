"""Re-analysis after fine-tuning the head: a run with --previous vs the same run from scratch.

The demo model (all four stages, jobs/demo.toml) is cataloged once; then its fc layer is changed, as a
fine-tuned head would be, and the new model is cataloged twice: reusing the first catalog, and from
scratch. Prints both wall times, their ratio, what was reused, and checks the two catalogs are equal.

    .venv/bin/python tests/benchmarks/bench_reanalysis.py            (make demo's inputs must exist)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[2]


def job_text(weights: Path, catalog: Path) -> str:
    """jobs/demo.toml with absolute paths, the given weights and catalog, and no [prepare] (inputs exist)."""
    text = (ROOT / "jobs" / "demo.toml").read_text()
    text = text.split("[prepare.")[0]
    text = re.sub(r'"\.\./([^"]+)"', lambda m: f'"{(ROOT / m.group(1)).resolve()}"', text)
    text = re.sub(r'weights = "[^"]+"', f'weights = "{weights}"', text)
    return re.sub(r'catalog = "[^"]+"', f'catalog = "{catalog}"', text)


def timed_run(job: Path, *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(job), *extra], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()  # no options: --help says what it does
    weights = ROOT / "data" / "demo" / "concept_cnn.pt"
    if not weights.exists():
        sys.exit("run `make demo` first: it makes the demo model and the concept world")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tuned = tmp / "tuned.pt"
        state = torch.load(weights, weights_only=True)
        gen = torch.Generator().manual_seed(0)
        state["fc.weight"] = state["fc.weight"] + 0.05 * torch.randn(state["fc.weight"].shape, generator=gen)
        torch.save(state, tuned)
        for name, w, out in (("first", weights, "first"), ("tuned", tuned, "tuned"), ("fresh", tuned, "fresh")):
            (tmp / f"{name}.toml").write_text(job_text(w, tmp / out))
        first = timed_run(tmp / "first.toml")
        reused = timed_run(tmp / "tuned.toml", "--previous", str(tmp / "first"))
        fresh = timed_run(tmp / "fresh.toml")
        from catalog_schema import Catalog

        a, b = Catalog.open(tmp / "tuned"), Catalog.open(tmp / "fresh")
        for table in ("units", "examples", "dissection", "shapley"):
            pd.testing.assert_frame_equal(a.table(table), b.table(table))
        done = {stage: sorted(layer for layer, r in layers.items() if r["action"] == "computed")
                for stage, layers in a.manifest["reuse"]["stages"].items()}
        print(f"first catalog (from scratch): {first:.1f} s")
        print(f"fine-tuned fc, --previous:    {reused:.1f} s   computed: {done}")
        print(f"fine-tuned fc, from scratch:  {fresh:.1f} s")
        print(f"speed-up of re-analysis: {fresh / reused:.2f}x (tables identical)")


if __name__ == "__main__":
    main()
