"""Benchmark: NetDissect-Lite's own code vs this project's dissection stage, on the same Broden data and model.

Run by hand (not collected by pytest):

    .venv/bin/python tests/benchmarks/bench_netdissect.py --netdissect DIR --job jobs/demo.toml
        [--layers conv1 conv2 conv3 conv4] [--quantile 0.05] [--repeat 1] [--gpu] [--json OUT.json] [--verbose]

DIR is a checkout of NetDissect-Lite: `git clone https://github.com/CSAILVision/NetDissect-Lite`.
It is copied to a temp dir and changed only by the text replacements in PATCHES (what current Python,
NumPy, SciPy and Pillow need, and this project's preprocessing so both sides feed the model identical
inputs) and a fresh settings.py. The job's model comes from the project's loader, with NetDissect-Lite's
`hook_feature` on each layer (as its model_loader). Timed: `FeatureOperator()`, `feature_extraction`
(memmap, as main.py), per layer `quantile_threshold` and `tally` (no savepath: nothing cached); the HTML
report (`generate_html_summary`) is skipped: it is not part of the analysis. The project side:
`neuron-catalog run` of a temp job with only [stages.dissection] (same model, data, concepts, layers,
quantile, seed), wall clock of the subprocess (Python and Ray start and the activations stage, which
dissection needs, included). Agreement: NetDissect-Lite's best label per unit (tally rows, 1-based) vs
units.parquet, its per-category top labels vs dissection.parquet's rank-0 rows, thresholds vs `threshold`;
then NetDissect-Lite's `tally` once more with the project's exact thresholds, whose label, intersection
and union must equal every rank-0 row of the catalog (`same_counts`). Last, the floor: in this process,
decoding every concept image and mask once and one forward pass (`floor_seconds`), the work no
dissection can skip, against the 1/20 of NetDissect-Lite's total that 20x would allow.
NetDissect-Lite's feature batches are the job's batch size, so both sides run the model on the same
batches.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.errors import UserError
from pipeline.inputs.model_survey import survey_model
from pipeline.inputs.models import build_model, recipe_from_config, resolve_layers
from pipeline.job.config import JobConfig
from pipeline.job.load import load_job
from pipeline.job.prepare import prepare_inputs
from pipeline.registry import STAGES

FO, DL, VQ = "feature_operation.py", "loader/data_loader.py", "util/vecquantile.py"
# (file, old text, new text, count, reason): every patch applied to the copy, nothing else changed.
PATCHES: list[tuple[str, str, str, int, str]] = [
    (FO, "from scipy.misc import imresize", "from scipy_misc_compat import imresize", 1,
     "scipy.misc.imresize was removed in SciPy 1.3: scipy 1.2's imresize(mode='F', bilinear) on Pillow"),
    (DL, "from scipy.misc import imread", "from scipy_misc_compat import imread", 1,
     "scipy.misc.imread was removed in SciPy 1.2: scipy 1.2's imread on Pillow"),
    (DL, "out[i] = rgb[:,:,0] + rgb[:,:,1] * 256",
     "out[i] = rgb[:,:,0].astype(numpy.int32) + rgb[:,:,1].astype(numpy.int32) * 256", 1,
     "NumPy 2 (NEP 50): uint8 mask * 256 raises OverflowError (NumPy 1 promoted to uint16)"),
    (DL, "result[list(np.indices(arr.shape)) + [arr]] = 1", "result[tuple(list(np.indices(arr.shape)) + [arr])] = 1", 1,
     "NumPy >= 1.23 reads a list of index arrays as one array index: labelcat silently becomes all ones"),
    (DL, "raise StopIteration", "return", 2,
     "PEP 479 (Python 3.7): StopIteration raised in the generators batches/tensor_batches is a RuntimeError"),
    (VQ, "self.extremes.fill(numpy.NaN)", "self.extremes.fill(numpy.nan)", 1, "numpy.NaN was removed in NumPy 2.0"),
    (FO, "features_blobs.append(output.data.cpu().numpy())", "features_blobs.append(output.data.cpu().numpy().copy())", 1,
     "on the CPU .numpy() shares the output's memory, which the model's next in-place ReLU overwrites"),
    (FO, "loader.tensor_batches(bgr_mean=self.mean)", "loader.tensor_batches(bgr_mean=None)", 1,
     "this project's preprocessing: no BGR mean subtraction (the BGR flip is undone by feature_extraction's ::-1)"),
    (FO, "input.div_(255.0 * 0.224)",
     "input = input.div_(255.0).sub_(torch.tensor(settings.MEAN).view(1, -1, 1, 1)).div_(torch.tensor(settings.STD).view(1, -1, 1, 1))", 1,
     "this project's preprocessing: RGB / 255, then (x - mean) / std from the job's [model] mean/std"),
]
COMPAT = '''"""scipy.misc.imread / imresize as SciPy 1.2 had them, ported to Pillow (written by bench_netdissect.py)."""
import numpy as np
from PIL import Image


def imread(name):
    im = Image.open(name)
    if im.mode == "P":  # scipy's fromimage: palette images decode to RGB(A) values, "1" to L
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    return np.asarray(im)


def imresize(arr, size, interp="bilinear", mode=None):
    assert mode == "F" and interp == "bilinear", "only the call NetDissect-Lite's tally makes"
    im = Image.fromarray(np.asarray(arr).astype(np.float32), mode="F")
    return np.asarray(im.resize((size[1], size[0]), Image.BILINEAR))
'''


def get_args_parser() -> argparse.ArgumentParser:
    """The command line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--netdissect", required=True, type=Path, help="a NetDissect-Lite checkout (feature_operation.py, loader/, util/)")
    ap.add_argument("--job", required=True, type=Path, help="job file: its model, [concepts] broden, preprocessing, seed")
    ap.add_argument("--layers", nargs="+", help="default: the job's layers with spatial maps")
    ap.add_argument("--quantile", type=float, help="default: the job's [stages.dissection] quantile")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs of the project's command (median is compared)")
    ap.add_argument("--gpu", action="store_true", help="NetDissect-Lite on CUDA when available (settings.GPU)")
    ap.add_argument("--json", type=Path, help="write every number to this JSON file")
    ap.add_argument("--verbose", action="store_true", help="show NetDissect-Lite's prints and the project's output")
    return ap


def broden_image_size(broden: Path) -> int:
    """The one image size of the Broden's index.csv (ih = iw for every row), else exit."""
    with open(broden / "index.csv", newline="") as f:
        sizes = {(int(r["ih"]), int(r["iw"])) for r in csv.DictReader(f)}
    if len(sizes) != 1 or len(set(*sizes)) != 1:
        sys.exit(f"{broden}/index.csv: images of several or non-square sizes {sorted(sizes)[:4]}; both sides must see the same input")
    return sizes.pop()[0]


def patched_copy(src: Path, dst: Path, settings: dict[str, Any]) -> None:
    """Copy the checkout, apply PATCHES (each fails loudly when its text is missing), write settings.py."""
    if not (src / FO).is_file():
        sys.exit(f"--netdissect {src}: no {FO}; pass a NetDissect-Lite checkout")
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".git", "dataset", "zoo", "result", "settings.py"))
    for file, old, new, count, reason in PATCHES:
        path = dst / file
        text = path.read_text()
        if text.count(old) != count:
            raise RuntimeError(f"patch for {file} ({reason}): expected {count}x {old!r}, found {text.count(old)}")
        path.write_text(text.replace(old, new))
    (dst / "scipy_misc_compat.py").write_text(COMPAT)
    (dst / "settings.py").write_text("".join(f"{k} = {v!r}\n" for k, v in settings.items()))


def run_netdissect(work: Path, model: torch.nn.Module, layers: list[str], gpu: bool, verbose: bool) -> dict[str, Any]:
    """NetDissect-Lite's steps as main.py calls them, each timed; returns times, thresholds and tally rows."""
    sys.path.insert(0, str(work))
    import feature_operation as fo_mod  # noqa: E402 (the patched copy)
    import loader.data_loader
    import settings
    for mod in (fo_mod, loader.data_loader, settings):
        assert Path(mod.__file__).resolve().is_relative_to(work.resolve()), f"{mod.__name__} imported from {mod.__file__}"
    for name in layers:  # as loader/model_loader.py's loadmodel (get_submodule also finds dotted paths)
        model.get_submodule(name).register_forward_hook(fo_mod.hook_feature)
    if gpu:
        model.cuda()
    times: dict[str, float] = {}
    out: dict[str, Any] = {"thresholds": {}, "rows": {}}
    with open(work / "netdissect.log", "w") as log, contextlib.redirect_stdout(sys.stdout if verbose else log):
        t0 = time.perf_counter()
        fo = fo_mod.FeatureOperator()
        times["FeatureOperator()"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        features, _ = fo.feature_extraction(model=model)
        times["feature_extraction"] = time.perf_counter() - t0
        for i, name in enumerate(layers):
            t0 = time.perf_counter()
            out["thresholds"][name] = np.asarray(fo.quantile_threshold(features[i]))
            times[f"{name} quantile_threshold"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            out["rows"][name] = fo.tally(features[i], out["thresholds"][name])
            times[f"{name} tally"] = time.perf_counter() - t0
    out["times"], out["categories"] = times, fo.data.category_names()
    out["operator"], out["features"] = fo, features  # for `same_counts` (not written to JSON)
    return out


def same_counts(nd: dict[str, Any], catalog: Path) -> dict[str, list[int]]:
    """NetDissect-Lite's own tally again, given the project's exact thresholds: per layer [rows whose label,
    intersection and union equal the catalog's rank-0 row of that unit and category, rows compared]."""
    diss = pd.read_parquet(catalog / "dissection.parquet")
    top = {(r.layer, r.unit, r.category): (r.concept, int(r.intersection), int(r.union))
           for r in diss[diss["rank"] == 0].itertuples()}
    out = {}
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        for i, layer in enumerate(nd["rows"]):
            thr = diss[diss.layer == layer].groupby("unit")["threshold"].first().sort_index().to_numpy(np.float32)
            rows = nd["operator"].tally(nd["features"][i], thr.astype(np.float64))
            pairs = [((int(r["unit"]) - 1, c), (r[f"{c}-label"], int(r[f"{c}-intersect"]),
                      int(r[f"{c}-activation"] + r[f"{c}-truth"] - r[f"{c}-intersect"])))
                     for r in rows for c in nd["categories"] if (layer, int(r["unit"]) - 1, c) in top]
            mine = [top[layer, u, c] for (u, c), _ in pairs]
            # a category's top label at IoU 0 is the first of its labels for both, but NetDissect-Lite names label 0
            alike = [theirs == ours or (theirs[1] == ours[1] == 0) for (_, theirs), ours in zip(pairs, mine)]
            out[layer] = [sum(alike), len(pairs)]
            differ = [(key, theirs, ours) for ((key, theirs), ours, a) in zip(pairs, mine, alike) if not a]
            for (u, c), theirs, ours in differ[:3]:
                print(f"  {layer} unit {u} {c}: NetDissect-Lite {theirs}, project {ours}", file=sys.stderr)
    return out


def toml_text(table: dict[str, Any], prefix: str = "") -> str:
    """A minimal TOML writer for a job's plain form (None values left out; JSON scalars and flat lists are TOML)."""
    lines = [f"{k} = {json.dumps(v)}\n" for k, v in table.items() if v is not None and not isinstance(v, dict)]
    subs = [f"\n[{prefix}{k}]\n" + toml_text(v, f"{prefix}{k}.") for k, v in table.items() if isinstance(v, dict)]
    return "".join(lines) + "".join(subs)


def project_job(job: JobConfig, layers: list[str], quantile: float, catalog: Path) -> str:
    """The given job reduced to the dissection stage on these layers with this quantile (absolute paths)."""
    plain = job.to_dict()
    for key in ("path", "previous", "prepare"):
        plain.pop(key, None)
    plain["model"]["layers"] = layers
    plain["stages"] = {"dissection": {**dataclasses.asdict(STAGES["dissection"].settings(job)), "quantile": quantile}}
    plain["output"] = {"catalog": str(catalog)}
    return toml_text(plain)


def run_project(tmp: Path, job: JobConfig, layers: list[str], quantile: float, repeat: int,
                verbose: bool) -> tuple[list[float], dict[str, float], Path]:
    """`neuron-catalog run JOB --stages dissection` `repeat` times (a fresh catalog each); wall seconds, and the
    median of each of its own steps over the runs."""
    cli = Path(sys.executable).with_name("neuron-catalog")  # the console script: PYTHONPATH still comes before the install
    command = [str(cli)] if cli.exists() else [sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())"]
    walls: list[float] = []
    steps: dict[str, list[float]] = {}
    for r in range(repeat):
        job_file = tmp / f"job{r}.toml"
        job_file.write_text(project_job(job, layers, quantile, tmp / f"catalog{r}"))
        t0 = time.perf_counter()
        done = subprocess.run([*command, "run", str(job_file), "--stages", "dissection"], cwd=tmp, text=True,
                              stdout=None if verbose else subprocess.PIPE, stderr=subprocess.STDOUT)
        walls.append(time.perf_counter() - t0)
        if done.returncode:
            sys.exit(f"neuron-catalog run failed (exit {done.returncode}):\n{done.stdout or ''}")
        wall = re.search(r"wall time: (.*); total", done.stdout or "")
        for m in re.finditer(r"([a-z][a-z ]*?) ([\d.]+) s", wall[1] if wall else ""):
            steps.setdefault(m[1], []).append(float(m[2]))
    return walls, {name: statistics.median(secs) for name, secs in steps.items()}, tmp / "catalog0"


def compare(nd: dict[str, Any], catalog: Path) -> dict[str, dict[str, Any]]:
    """Per layer: best labels, per-category top labels and thresholds, NetDissect-Lite vs the catalog."""
    units, diss = pd.read_parquet(catalog / "units.parquet"), pd.read_parquet(catalog / "dissection.parquet")
    top = diss[diss["rank"] == 0]
    tops = {(r.layer, r.unit, r.category): (r.concept, float(r.iou)) for r in top.itertuples()}
    result = {}
    for layer, rows in nd["rows"].items():
        mine = {int(r.unit): (r.label, r.category, float(r.iou)) for r in units[units.layer == layer].itertuples()}
        theirs = {int(r["unit"]) - 1: r for r in rows}
        same = [u for u in theirs if theirs[u]["label"] == mine[u][0]]
        pairs = [(u, c) for u in theirs for c in nd["categories"] if (layer, u, c) in tops]
        cat_same = [(u, c) for u, c in pairs if theirs[u][f"{c}-label"] == tops[layer, u, c][0]]
        thr = diss[diss.layer == layer].groupby("unit")["threshold"].first().reindex(range(len(theirs))).to_numpy(float)
        ref = nd["thresholds"][layer]
        result[layer] = {
            "units": len(theirs), "best_label_agree": len(same),
            "max_iou_diff_agreeing": max((abs(float(theirs[u]["score"]) - mine[u][2]) for u in same), default=float("nan")),
            "max_best_iou_diff": max(abs(float(theirs[u]["score"]) - mine[u][2]) for u in theirs),
            "category_pairs": len(pairs), "category_label_agree": len(cat_same),
            "max_category_iou_diff_agreeing": max((abs(float(theirs[u][f"{c}-iou"]) - tops[layer, u, c][1])
                                                   for u, c in cat_same), default=float("nan")),
            "max_threshold_diff": float(np.nanmax(np.abs(ref - thr))),
            "max_threshold_rel_diff": float(np.nanmax(np.abs(ref - thr)) / np.nanmax(np.abs(thr))),  # of the layer's largest
            "thresholds": {"netdissect": ref.tolist(), "project": thr.tolist()},
            "disagreements": [{"unit": u, "netdissect": [theirs[u]["label"], theirs[u]["category"], float(theirs[u]["score"])],
                               "project": list(mine[u])} for u in sorted(set(theirs) - set(same))],
            "category_disagreements": [{"unit": u, "category": c, "netdissect": [theirs[u][f"{c}-label"], float(theirs[u][f"{c}-iou"])],
                                        "project": list(tops[layer, u, c])} for u, c in pairs if (u, c) not in cat_same],
        }
    return result


def floor_seconds(job: JobConfig, layers: list[str]) -> dict[str, float]:
    """In this process, on the CPU: the work no dissection of these layers can skip (decoding every concept image
    and mask once, one forward pass up to the last layer), and the torch threads it ran on. A fresh model:
    NetDissect-Lite's hooks stay on the one it ran."""
    from pipeline.inputs.batches import Preprocess
    from pipeline.inputs.broden import load_masks, open_broden
    from pipeline.inputs.concept_batches import iter_concept_batches
    from pipeline.inputs.images import load_image
    from pipeline.inputs.layer_taps import tapped

    broden = open_broden(job.concepts.broden, job.concepts.categories)
    size, model = job.model.input_size, build_model(recipe_from_config(job.model)).eval()
    t0 = time.perf_counter()
    for image in broden.images:
        load_image(broden.root / "images" / image.image, size, len(job.model.mean), crop=False)
    t1 = time.perf_counter()
    for image in broden.images:
        load_masks(broden, image)
    t2 = time.perf_counter()
    prep = Preprocess(size, job.model.mean, job.model.std, job.data.batch_size)
    batches = [b.inputs for b in iter_concept_batches(broden, range(len(broden.images)), prep, [], with_masks=False)]
    infos = [info for info in survey_model(model, layers, (len(job.model.mean), size, size)).layers if info.name in layers]
    with torch.inference_mode(), tapped(model, infos, lambda _name, _out: None) as run:
        run(batches[0])  # warm-up
        t3 = time.perf_counter()
        for inputs in batches:
            run(inputs)
        t4 = time.perf_counter()
    return {"decode images": t1 - t0, "decode masks": t2 - t1, "one forward": t4 - t3, "torch threads": torch.get_num_threads()}


def report(out: dict[str, Any]) -> None:
    """The readable table."""
    nd, pr, t, layers = out["netdissect"], out["project"], out["netdissect"]["times"], out["layers"]
    print(f"\n{out['images']} concept images, layers {' '.join(layers)}, quantile {out['quantile']}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, numpy {np.__version__}")
    rows = [("FeatureOperator()", t["FeatureOperator()"]), ("feature_extraction", t["feature_extraction"]),
            ("construct + features", t["FeatureOperator()"] + t["feature_extraction"])]
    rows += [(f"{layer} {step}", t[f"{layer} {step}"]) for step in ("quantile_threshold", "tally") for layer in layers]
    print("NetDissect-Lite (patched copy)            seconds")
    print("".join(f"  {name:38s} {secs:8.2f}\n" for name, secs in rows + [("total", nd["total"])]), end="")
    runs = f"   runs: {', '.join(f'{w:.2f}' for w in pr['runs'])}, median" if len(pr["runs"]) > 1 else ""
    print(f"project: neuron-catalog run --stages dissection (needs and runs activations too)\n"
          f"  command wall time (subprocess)         {pr['wall']:8.2f}{runs}\n"
          "  its own steps (median): " + ", ".join(f"{k} {v:.2f}" for k, v in pr["steps"].items()))
    alone = f" (dissection step alone: {nd['total'] / pr['steps']['dissection']:.1f}x)" if "dissection" in pr["steps"] else ""
    print(f"ratio NetDissect-Lite total / project wall: {out['ratio']:.2f}x{alone}")
    f = out["floor"]
    least = f["decode images"] + f["decode masks"] + f["one forward"]
    print(f"floor, in one process: decoding the images {f['decode images']:.2f} s and masks {f['decode masks']:.2f} s, one "
          f"forward {f['one forward']:.2f} s ({f['torch threads']} torch threads): {least:.2f} s together; 20x NetDissect-Lite "
          f"needs the whole stage within {nd['total'] / 20:.2f} s")
    print("agreement   best label   max|dIoU|   per-category top   max|dIoU|   max|d threshold| (/ layer max)")
    for layer, a in out["agreement"].items():
        print(f"  {layer:8s} {a['best_label_agree']:4d}/{a['units']:<4d} {a['max_iou_diff_agreeing']:11.2e}"
              f"   {a['category_label_agree']:5d}/{a['category_pairs']:<5d} {a['max_category_iou_diff_agreeing']:12.2e}"
              f"   {a['max_threshold_diff']:.2e} ({a['max_threshold_rel_diff']:.1e})")
    agree, total = (sum(a[k] for a in out["agreement"].values()) for k in ("best_label_agree", "units"))
    print(f"  all      {agree:4d}/{total:<4d}   (max|dIoU| over units / categories whose labels agree)")
    print("NetDissect-Lite's own tally given the project's exact thresholds: rank-0 rows with the same label, "
          "intersection and union: " + ", ".join(f"{layer} {a}/{b}" for layer, (a, b) in out["same_counts_with_project_thresholds"].items()))
    for layer, a in out["agreement"].items():
        for d in a["disagreements"][:5]:
            (nl, nc, ns), (ml, mc, ms) = d["netdissect"], d["project"]
            print(f"  differs: {layer} unit {d['unit']}: NetDissect-Lite {nl} ({nc}, {ns:.3f}), project {ml} ({mc}, {ms:.3f})")


def main() -> None:
    """Run both sides, compare, print; optionally write JSON."""
    args = get_args_parser().parse_args()
    try:
        job = load_job(args.job, STAGES)
        prepare_inputs(job)  # make the demo's concept world and model if missing (a no-op when present)
    except UserError as exc:
        sys.exit(f"{args.job}: {exc}")
    if (broden := job.concepts.broden) is None:
        sys.exit(f"{args.job}: no [concepts] broden")
    size = broden_image_size(broden)
    if size != job.model.input_size:
        sys.exit(f"the Broden's images are {size} px but the job's input_size is {job.model.input_size}: NetDissect-Lite "
                 "feeds images at their file size, so the two sides would not see the same input. Stopping.")
    model = build_model(recipe_from_config(job.model)).eval()
    shape = (len(job.model.mean), size, size)
    layers = resolve_layers(model, tuple(args.layers) if args.layers else job.model.layers)
    flat = [info.name for info in survey_model(model, layers, shape).layers if len(info.shape) != 3]
    if args.layers and flat:
        sys.exit(f"--layers {' '.join(flat)}: no spatial map; NetDissect-Lite's tally needs [C, H, W] features")
    layers = [n for n in layers if n not in flat]  # model order: NetDissect-Lite's hooks append in forward order
    quantile = args.quantile if args.quantile is not None else STAGES["dissection"].settings(job).quantile
    with open(broden / "category.csv", newline="") as f:  # the job's categories, else all of category.csv
        categories = [r["name"] for r in csv.DictReader(f) if job.concepts.categories in (None, ()) or r["name"] in job.concepts.categories]
    gpu = bool(args.gpu and torch.cuda.is_available())
    tmp = Path(tempfile.mkdtemp(prefix="bench_netdissect_"))
    try:
        settings = {"GPU": gpu, "TEST_MODE": False, "CLEAN": False, "QUANTILE": quantile, "PARALLEL": 1, "CATAGORIES": categories,
                    "OUTPUT_FOLDER": str(tmp / "netdissect_out"), "DATA_DIRECTORY": str(broden), "IMG_SIZE": size,
                    "FEATURE_NAMES": layers, "WORKERS": 12, "BATCH_SIZE": job.data.batch_size, "TALLY_BATCH_SIZE": 16, "TALLY_AHEAD": 4,
                    "INDEX_FILE": "index.csv", "MEAN": list(job.model.mean), "STD": list(job.model.std)}
        patched_copy(args.netdissect, tmp / "netdissect", settings)
        nd = run_netdissect(tmp / "netdissect", model, layers, gpu, args.verbose)
        nd["total"] = sum(nd["times"].values())
        walls, steps, catalog = run_project(tmp, job, layers, quantile, args.repeat, args.verbose)
        counts = same_counts(nd, catalog)
        floor = floor_seconds(job, layers)
        wall = statistics.median(walls)
        out = {"job": str(args.job), "layers": layers, "quantile": quantile, "categories": categories, "images": len(pd.read_csv(broden / "index.csv")),
               "netdissect": {"times": nd["times"], "total": nd["total"]},
               "project": {"runs": walls, "wall": wall, "steps": steps}, "ratio": nd["total"] / wall, "floor": floor,
               "agreement": compare(nd, catalog), "same_counts_with_project_thresholds": counts, "patches": [{"file": p[0], "old": p[1], "new": p[2], "reason": p[4]} for p in PATCHES],
               "netdissect_settings": settings}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
