"""The generated sample of a generator job: its latents, the images the generator makes of them, and (with a
segmenter) their concept masks, written once as a Broden-format directory so that every stage reads generated
images as it reads a data set, and the dissection runs unchanged on the segmenter's masks.

Layout of the sample folder (reused while its fingerprint holds: the model, [latents], mean/std, the segmenter):

    latents.npy              float32 [count, *shape]: row i made images/NNNNNN.png
    images/NNNNNN.png        the generated images (pixels = output * std + mean, in [0, 1], times 255)
    images/NNNNNN_<cat>.png  the segmenter's masks, Broden's encoding (R + 256*G), at the segmenter's resolution
    index.csv, label.csv, category.csv, c_<cat>.csv   the Broden tables
    sample/NNNNNN.png        hard links to the images: the job's data set
    sample.json              fingerprint, count, image size, labels
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from pipeline.concepts.broden_writer import save_mask, write_csv
from pipeline.errors import UserError
from pipeline.generators.latents import LATENTS_FILE, sample_latents
from pipeline.generators.segmenter import SegmenterSpec, segment
from pipeline.inputs.fingerprints import json_fingerprint, model_fingerprint
from pipeline.job.config import JobConfig

SAMPLE_FORMAT = 1
BATCH = 32


@dataclass(frozen=True)
class Sample:
    root: Path
    count: int
    size: int  # the generated images' side
    fingerprint: str
    reused: bool = False

    @property
    def images(self) -> Path:
        return self.root / "sample"


def sample_folder(job: JobConfig, catalog: Path) -> Path:
    return job.latents.folder or catalog.parent / f"{catalog.name}.sample"


def make_sample(job: JobConfig, model: nn.Module, folder: Path, segmenter: tuple[SegmenterSpec, nn.Module] | None) -> Sample:
    """The sample at `folder`, made (atomically) unless one with the same fingerprint is there."""
    spec = segmenter[0] if segmenter else None
    z = job.latents
    fingerprint = json_fingerprint({"format": SAMPLE_FORMAT, "model": model_fingerprint(model),
                                    "latents": {k: v for k, v in asdict(z).items() if k != "folder"},
                                    "mean": job.model.mean, "std": job.model.std,
                                    "segmenter": spec and {"labels": spec.labels, "source": spec.recipe.factory_source,
                                                           "name": spec.recipe.name,
                                                           "weights": json_fingerprint(str(spec.recipe.weights))}})
    found = _existing(folder, fingerprint)
    if found is not None:
        return found
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        size = _write(tmp, job, model, segmenter)
        (tmp / "sample.json").write_text(json.dumps({"fingerprint": fingerprint, "count": z.count, "size": size,
                                                     "labels": spec and spec.labels}, indent=1) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return Sample(folder, z.count, size, fingerprint)


def _existing(folder: Path, fingerprint: str) -> Sample | None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"latents.folder {folder} is a file; point it at a folder for the generated sample.")
    if not folder.exists() or (folder.is_dir() and not any(folder.iterdir())):
        return None
    try:
        doc = json.loads((folder / "sample.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"latents.folder {folder} exists and holds no generated sample (no readable sample.json); "
                        "delete it or choose another folder.") from None
    if doc.get("fingerprint") != fingerprint:
        return None  # made by another model, sampler or segmenter: made again
    return Sample(folder, int(doc["count"]), int(doc["size"]), fingerprint, reused=True)


def generate(model: nn.Module, latents: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """uint8 [N, H, W, C]: the generator's images of `latents`, mapped to pixels by mean and std."""
    try:
        with torch.inference_mode():
            out = model(torch.from_numpy(latents))
    except Exception as exc:
        raise UserError(f"the generator failed on latents of shape {tuple(latents.shape)}: {type(exc).__name__}: {exc}. "
                        "Check [latents] shape (one latent's shape, without the batch axis).") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[1] != len(mean) or out.shape[2] != out.shape[3]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"the generator returned {got} for latents of shape {tuple(latents.shape)}: a generator must "
                        f"return square images [N, {len(mean)}, S, S] ({len(mean)} = the length of [model] mean).")
    return to_pixels(out, mean, std).numpy()


def to_pixels(out: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 [N, H, W, C] of a generator's output [N, C, H, W]: output * std + mean, in [0, 1], times 255."""
    m, s = (torch.tensor(v, dtype=out.dtype, device=out.device).view(1, -1, 1, 1) for v in (mean, std))
    return ((out * s + m).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def _write(root: Path, job: JobConfig, model: nn.Module, segmenter: tuple[SegmenterSpec, nn.Module] | None) -> int:
    (root / "images").mkdir(parents=True)
    (root / "sample").mkdir()
    z = job.latents
    latents = sample_latents(z)
    np.save(root / LATENTS_FILE, latents)
    spec, module = segmenter or (None, None)
    cats = spec.categories if spec else ()
    cat_of = np.array([0] + [cats.index(c) for _, c in spec.labels]) if spec else None
    rows, counts, size = [], {}, 0  # counts: label number -> [images, the sum of its pixel fractions]
    for start in range(0, z.count, BATCH):
        pixels = generate(model, latents[start:start + BATCH], job.model.mean, job.model.std)
        size = pixels.shape[1]
        planes = segment(module, pixels, len(spec.labels)) if spec else None
        for i, image in enumerate(pixels):
            name = f"{start + i:06d}"
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(root / "images" / f"{name}.png")
            os.link(root / "images" / f"{name}.png", root / "sample" / f"{name}.png")
            row = {"image": f"{name}.png", "split": "train", "ih": size, "iw": size}
            if planes is not None:
                row.update(_masks(root / "images", name, planes[i], cat_of, cats, counts))
            rows.append(row)
    if spec:
        header = ("image", "split", "ih", "iw", "sh", "sw", *cats)
        write_csv(root / "index.csv", header, [{k: r.get(k, "") for k in header} for r in rows])
        _tables(root, spec, counts)
    return size


def _masks(folder: Path, name: str, planes: np.ndarray, cat_of: np.ndarray, cats: tuple[str, ...],
           counts: dict[int, list]) -> dict[str, object]:
    """Write one image's masks, one file per category and plane holding a label; its index.csv cells."""
    cells: dict[str, object] = {"sh": planes.shape[1], "sw": planes.shape[2]}
    for number in np.unique(planes):
        if number:
            seen = counts.setdefault(int(number), [0, 0.0])  # images holding it, the sum of its pixel fractions
            seen[0] += 1
            seen[1] += float((planes == number).any(axis=0).mean())
    for c, cat in enumerate(cats):
        files = []
        for p, plane in enumerate(planes):
            mine = np.where(cat_of[plane] == c, plane, 0) * (plane > 0)
            if mine.any():
                files.append(f"{name}_{cat}_{p}.png")
                save_mask(folder / files[-1], mine)
        cells[cat] = ";".join(files)
    return cells


def _tables(root: Path, spec: SegmenterSpec, counts: dict[int, list]) -> None:
    cats = spec.categories
    freq = {k: counts.get(k, [0, 0.0])[0] for k in range(1, len(spec.labels) + 1)}
    cover = {k: f"{counts[k][1] / counts[k][0]:.6f}" if k in counts else "0" for k in freq}
    write_csv(root / "label.csv", ("number", "name", "category", "frequency", "coverage", "syns"),
              [(k, name, f"{cat}({freq[k]})", freq[k], cover[k], "") for k, (name, cat) in enumerate(spec.labels, 1)])
    numbers = {cat: [k for k, (_, c) in enumerate(spec.labels, start=1) if c == cat] for cat in cats}
    write_csv(root / "category.csv", ("name", "first", "last", "count", "frequency"),
              [(cat, min(numbers[cat]), max(numbers[cat]), len(numbers[cat]), "") for cat in cats])
    for cat in cats:
        write_csv(root / f"c_{cat}.csv", ("code", "number", "name", "frequency", "coverage"),
                  [(code, k, spec.labels[k - 1][0], freq[k], cover[k]) for code, k in enumerate(numbers[cat], 1)])
