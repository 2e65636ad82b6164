"""Reading a Broden-format directory (README, "The Broden format"), as NetDissect-Lite reads broden1_224
(label.csv, category.csv and c_<cat>.csv are read in `pipeline.broden_tables`).

`open_broden` reads and validates index.csv and label.csv (category.csv and c_<cat>.csv are checked
for consistency when present); `load_masks` decodes one image's mask PNGs (label = R + 256*G).

Choices (where the format leaves room):
- The categories are those of category.csv, in its order, as NetDissect-Lite's SegmentationData takes
  them; each needs an index.csv column and a c_<cat>.csv (else a UserError: NetDissect-Lite fails there
  too). An index.csv column category.csv does not list is ignored, and so recorded (`ignored_columns`).
  Without category.csv (a hand-built Broden): index.csv's columns after image,split,ih,iw,sh,sw, in file
  order; when some have a c_<cat>.csv, those without one are ignored. Only the cells of kept categories
  are parsed and validated.
- A cell is a `;`-joined list; empty items are ignored (as NetDissect does). An item of ASCII
  digits is an image-level label number, an item ending in `.png` (any case) a mask path relative
  to images/; anything else is a UserError. The image-level number 0 means "unlabeled" and is
  dropped (NetDissect treats it as no data).
- Each label has one primary category, whichever categories are kept (so it does not depend on
  the filter): as NetDissect-Lite, the category whose c_<cat>.csv gives the label the largest
  coverage (ties -> the first category column of index.csv); a label in no c_<cat>.csv (or a
  Broden without them) takes the largest count of label.csv's `category` cell
  (`object(3);part(10)` -> part, ties -> the first listed). Masks and `ConceptImage.labels` keep a
  label wherever it is found (a part-plane pixel of a label whose primary category is object, say):
  which of them count is the dissection's rule (`[stages.dissection] union`). Labels whose primary
  category is not kept read as 0.
- Images with no item (mask or nonzero label) in any kept category are left out, as
  NetDissect-Lite's `index_has_any_data` filter does; `ConceptImage.row` keeps the index.csv row.
- label.csv must have number,name,category (frequency, coverage and syns are optional); an empty
  frequency / coverage reads as 0. Numbers are unique; a row numbered 0 (unlabeled) is skipped.
- category.csv needs only its name column, c_<cat>.csv its code, number and coverage columns (what
  NetDissect-Lite reads). A c_<cat>.csv row naming a label number label.csv lacks is skipped and noted
  in `ignored_rows` (NetDissect-Lite never looks it up).
- A mask pixel whose label number is not in label.csv makes the image a SkippedImage naming the
  value(s): one bad mask must not stop a run, and the skip is recorded, never silent.
- Masks are read as PNG files only (another format under a .png name is a SkippedImage). Masks of
  mode RGB, RGBA and P decode as R + 256*G; a grayscale (L) mask as its value; other modes are a
  SkippedImage. A mask's size is checked against sh x sw, and its header against Pillow's
  pixel limit (`pipeline.images.open_image`), before any pixel is decoded.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import UnidentifiedImageError

from pipeline.inputs.broden_tables import DIGITS, Label, primary_by_coverage, read_codes, read_csv, read_labels, where
from pipeline.inputs.broden_tables import categories as table_categories
from pipeline.errors import UserError
from pipeline.inputs.images import SkippedImage, failure_reason, open_image

INDEX_META = ("image", "split", "ih", "iw", "sh", "sw")
MAX_MASK_LABEL = 255 + 256 * 255  # the largest number R + 256*G can encode


@dataclass(frozen=True)
class ConceptImage:
    row: int  # 1-based data row of index.csv (for messages)
    image: str  # path relative to images/
    split: str
    size: tuple[int, int]  # (ih, iw)
    mask_size: tuple[int, int]  # (sh, sw)
    masks: dict[str, tuple[str, ...]]  # category -> mask PNG paths (relative to images/), kept categories with masks
    labels: dict[str, tuple[int, ...]]  # index.csv column -> its image-level label numbers (of kept labels)


@dataclass(frozen=True)
class Broden:
    root: Path
    categories: tuple[str, ...]  # kept categories, in the order asked for
    labels: dict[int, Label]  # every label of label.csv whose primary category is kept
    images: tuple[ConceptImage, ...]
    # per kept category: mask value -> itself (a label whose primary category is kept), 0 (unlabeled
    # or a label of a category not kept), -1 (not in label.csv); values past the end are not in label.csv
    luts: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)
    ignored_columns: dict[str, str] = field(default_factory=dict)  # index.csv column -> why it is not a category here
    ignored_rows: tuple[str, ...] = ()  # rows of the tables that were skipped, each naming file, row and why


def _int_cell(path: Path, row: int, line: int, column: str, value: str) -> int:
    value = value.strip()
    if not DIGITS.match(value) or int(value) == 0:
        what = "image (ih, iw)" if column.startswith("i") else "mask (sh, sw)"
        raise UserError(f"{where(path, row, line, column)}: {value!r} is not a positive integer. "
                        f"Write the {what} size in pixels.")
    return int(value)


def _read_index(path: Path, kept: tuple[str, ...], header: list[str], rows: Iterator[tuple[int, int, list[str]]],
                all_labels: dict[int, Label]) -> list[ConceptImage]:
    """The images of index.csv holding any item of a kept category."""
    meta = {c: header.index(c) for c in INDEX_META}
    columns = [(cat, header.index(cat)) for cat in kept]
    images = []
    for row, line, cells in rows:
        image = cells[meta["image"]].strip()
        if not image:
            raise UserError(f"{where(path, row, line, 'image')}: empty; write the image path relative to images/.")
        ih, iw, sh, sw = (_int_cell(path, row, line, c, cells[meta[c]]) for c in ("ih", "iw", "sh", "sw"))
        masks: dict[str, tuple[str, ...]] = {}
        labels: dict[str, tuple[int, ...]] = {}
        has_data = False
        for cat, at in columns:
            cell = cells[at]
            if not cell:
                continue
            files, numbers = [], []
            for item in cell.split(";"):
                item = item.strip()
                if not item:
                    continue
                if DIGITS.match(item):
                    number = int(item)
                    if number and number not in all_labels:
                        raise UserError(f"{where(path, row, line, cat)}: image-level label {number} is not in "
                                        "label.csv. Add it to label.csv or fix the cell.")
                    if number:
                        numbers.append(number)
                elif item.lower().endswith(".png"):
                    files.append(item)
                else:
                    raise UserError(f"{where(path, row, line, cat)}: item {item!r} is neither a label number nor a "
                                    ".png mask path; write ';'-joined integers or mask paths relative to images/.")
            if files:
                masks[cat] = tuple(files)
            mine = tuple(n for n in numbers if all_labels[n].category in kept)
            if mine:
                labels[cat] = mine
            has_data = has_data or bool(files or numbers)  # another category's label is data too, as in NetDissect
        if has_data:
            images.append(ConceptImage(row, image, cells[meta["split"]].strip(), (ih, iw), (sh, sw), masks, labels))
    return images


def _luts(kept: tuple[str, ...], all_labels: dict[int, Label]) -> dict[str, np.ndarray]:
    known = [n for n in all_labels if n <= MAX_MASK_LABEL]
    size = max(known, default=0) + 1
    luts = {}
    for cat in kept:
        lut = np.full(size, -1, dtype=np.int32)
        lut[0] = 0
        for n in known:
            lut[n] = n if all_labels[n].category in kept else 0
        luts[cat] = lut
    return luts


def open_broden(root: Path, categories: Sequence[str] | None = None) -> Broden:
    """Read and validate index.csv and label.csv (category.csv / c_<cat>.csv checked for consistency when present).

    `categories`: the categories to keep, in this order (default: every category column of index.csv).
    Raises UserError for anything the user must fix; mask files are not opened here (see load_masks).
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"Broden directory {root} does not exist or is not a directory: point [concepts] broden "
                        "at a folder holding index.csv, label.csv and images/ (or run `neuron-catalog make-concepts`).")
    missing = [name for name, ok in (("index.csv", (root / "index.csv").is_file()),
                                     ("images/", (root / "images").is_dir())) if not ok]
    if missing:
        raise UserError(f"{root} is not a Broden directory: {' and '.join(missing)} missing. A Broden directory "
                        "holds index.csv, label.csv, images/ (and category.csv, c_<category>.csv).")
    all_labels = read_labels(root / "label.csv")
    index = root / "index.csv"
    header, rows = read_csv(index, INDEX_META, f"index.csv lists the images: {','.join(INDEX_META)} then one column per category.")
    available, ignored = table_categories(root, [c for c in header if c not in INDEX_META])
    if categories is None:
        kept = tuple(available)
    else:
        kept = tuple(dict.fromkeys([categories] if isinstance(categories, str) else categories))
        _check_asked(index, kept, available, ignored)
        ignored.update({c: "not in [concepts] categories" for c in available if c not in kept})
    notes: list[str] = []
    all_labels = primary_by_coverage(all_labels, read_codes(root, available, all_labels, notes))
    images = _read_index(index, kept, header, rows, all_labels)
    if not images:
        raise UserError(f"{index} lists no image with data in the categories {', '.join(kept) or '(none)'}: "
                        "add rows (or keep other categories).")
    labels = {n: label for n, label in sorted(all_labels.items()) if label.category in kept}
    return Broden(root, kept, labels, tuple(images), _luts(kept, all_labels), ignored, tuple(notes))


def _check_asked(index: Path, kept: tuple[str, ...], available: list[str], ignored: dict[str, str]) -> None:
    """Every category [concepts] asks for is one of the directory's."""
    unknown = [c for c in kept if c not in available]
    if not unknown:
        return
    why = "; ".join(f"{c!r} is a column of index.csv but is ignored ({ignored[c]})" for c in unknown if c in ignored)
    raise UserError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}: "
                    f"the categories of {index.parent} are {', '.join(available) or 'none'}"
                    f"{'; ' + why if why else ''}. Fix [concepts] categories.")


def _decode(path: Path, where: str, mask_size: tuple[int, int]) -> np.ndarray:
    """A mask PNG as int32 [sh, sw] label numbers R + 256*G."""
    try:
        with open_image(path, formats=("PNG",)) as img:  # a mask is a PNG (README, "The Broden format"): no other format is tried
            if img.size != (mask_size[1], mask_size[0]):  # checked before decoding a pixel
                raise SkippedImage(f"{where}: mask is {img.height}x{img.width}, index.csv says "
                                   f"sh x sw = {mask_size[0]}x{mask_size[1]}")
            img.load()
            if img.mode == "L":
                values = np.asarray(img).astype(np.int32)
            elif img.mode in ("RGB", "RGBA", "P", "PA"):
                rgb = np.asarray(img if img.mode in ("RGB", "RGBA") else img.convert("RGB")).astype(np.int32)
                values = rgb[..., 0] + 256 * rgb[..., 1]
            else:
                raise SkippedImage(f"{where}: PNG mode {img.mode} is not an RGB label mask (label = R + 256*G)")
    except SkippedImage as exc:
        text = str(exc)
        raise SkippedImage(text if text.startswith(where) else f"{where}: unreadable mask ({text})") from None
    except FileNotFoundError:
        raise SkippedImage(f"{where}: the mask file does not exist") from None
    except UnidentifiedImageError:
        raise SkippedImage(f"{where}: unreadable mask (not a PNG file)") from None
    except Exception as exc:  # corrupt, truncated
        raise SkippedImage(f"{where}: unreadable mask ({failure_reason(exc, path)})") from None
    return values


def load_masks(broden: Broden, image: ConceptImage) -> dict[str, np.ndarray]:
    """Per kept category, int32 [planes, sh, sw] label numbers (planes = 0 when the image has no mask there).

    Image-level labels are not included (they are in image.labels). Pixels of a label whose primary
    category was filtered out are 0. Raises SkippedImage naming the file and
    index.csv row for a missing or unreadable PNG, a wrong mask size, or a label number not in label.csv.
    """
    sh, sw = image.mask_size
    out = {}
    for cat in broden.categories:
        paths = image.masks.get(cat, ())
        planes = np.zeros((len(paths), sh, sw), dtype=np.int32)
        lut = broden.luts.get(cat)
        if lut is None:  # a Broden built in code, without tables: its labels as they are, the rest unknown
            lut = _luts(broden.categories, broden.labels)[cat]
        for k, rel in enumerate(paths):
            where = f"mask {rel} ({cat}) of index.csv row {image.row}"
            values = _decode(broden.root / "images" / rel, where, (sh, sw))
            mapped = lut[np.minimum(values, len(lut) - 1)]
            bad = (values >= len(lut)) | (mapped < 0)
            if bad.any():
                found = np.unique(values[bad])
                shown = ", ".join(str(v) for v in found[:5]) + (", ..." if len(found) > 5 else "")
                raise SkippedImage(f"{where}: label number(s) {shown} not in label.csv")
            planes[k] = mapped
        out[cat] = planes
    return out
