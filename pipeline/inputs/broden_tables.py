"""The small tables of a Broden directory: label.csv, category.csv and c_<cat>.csv, and the CSV reading
they share with index.csv (see `pipeline.broden` for the rules they follow, as NetDissect-Lite's loader)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.errors import UserError

LABEL_COLUMNS = ("number", "name", "category")  # what must be there; frequency, coverage, syns may be
CATEGORY_COLUMNS = ("name",)
CODE_COLUMNS = ("code", "number", "coverage")
DIGITS = re.compile(r"^\d+$")
_CATEGORY_ITEM = re.compile(r"^([^(]*)\(([^)]*)\)$")


@dataclass(frozen=True)
class Label:
    number: int  # as in label.csv (1-based; 0 = unlabeled, never a Label)
    name: str
    category: str  # primary category (largest count in label.csv's `category` cell; ties -> first listed)
    coverage: float
    frequency: int
    synonyms: tuple[str, ...] = ()  # label.csv `syns`, ';'-joined there


def read_csv(path: Path, expected: Sequence[str], fix: str) -> tuple[list[str], Iterator[tuple[int, int, list[str]]]]:
    """Header and (data row, line, cells) of a CSV; UserError when unreadable or a column is missing."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # universal newlines; a BOM is dropped
    except FileNotFoundError:
        raise UserError(f"{path} is missing. {fix}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({exc}). {fix}") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in expected if c not in header]
    if missing:
        raise UserError(f"{path}: missing column(s) {', '.join(missing)}; the header must hold "
                        f"{','.join(expected)} (found {','.join(header) or 'an empty file'}). {fix}")

    def body() -> Iterator[tuple[int, int, list[str]]]:
        row = 0
        try:
            for cells in reader:
                if not cells:
                    continue
                row += 1
                if len(cells) != len(header):
                    raise UserError(f"{path}: row {row} (line {reader.line_num}) has {len(cells)} cells, the header "
                                    f"{len(header)}: fix the row (quote cells that hold commas).")
                yield row, reader.line_num, cells
        except csv.Error as exc:
            raise UserError(f"{path}: line {reader.line_num}: {exc}. Fix the CSV quoting.") from None

    return header, body()


def where(path: Path, row: int, line: int, column: str) -> str:
    return f"{path}: row {row} (line {line}), column '{column}'"


def read_labels(path: Path) -> dict[int, Label]:
    """Every row of label.csv as a Label with its primary category."""
    header, rows = read_csv(path, LABEL_COLUMNS, "label.csv lists every label: number,name,category,frequency,coverage,syns.")
    col = {c: header.index(c) for c in (*LABEL_COLUMNS, "frequency", "coverage", "syns") if c in header}
    labels: dict[int, Label] = {}
    for row, line, cells in rows:
        raw = cells[col["number"]].strip()
        if not DIGITS.match(raw):
            raise UserError(f"{where(path, row, line, 'number')}: {raw!r} is not a label number (an integer >= 1). "
                            "Fix or remove the row.")
        number = int(raw)
        if number == 0:  # 0 means unlabeled: NetDissect-Lite's label array holds a row for it, never a label
            continue
        if number in labels:
            raise UserError(f"{where(path, row, line, 'number')}: label {number} is listed twice. Keep one row per label.")
        cell, best, primary = cells[col["category"]].strip(), -1, ""
        if not cell:
            raise UserError(f"{where(path, row, line, 'category')}: empty; write the label's categories as name(count), "
                            "';'-joined, e.g. object(35);part(5).")
        for item in cell.split(";"):
            match = _CATEGORY_ITEM.match(item.strip())
            try:
                count = int(match.group(2)) if match else None
            except ValueError:
                count = None
            if count is None:
                raise UserError(f"{where(path, row, line, 'category')}: {item!r} is not name(count) with an integer "
                                "count; write e.g. object(35);part(5).")
            if count > best:
                best, primary = count, match.group(1).strip()
        frequency_cell = cells[col["frequency"]].strip() if "frequency" in col else ""
        coverage_cell = cells[col["coverage"]].strip() if "coverage" in col else ""
        try:
            frequency, coverage = int(frequency_cell or 0), float(coverage_cell or 0.0)
        except ValueError:
            raise UserError(f"{path}: row {row} (line {line}): frequency {frequency_cell!r} must be an integer "
                            f"and coverage {coverage_cell!r} a number. Fix the row.") from None
        synonyms = tuple(s.strip() for s in cells[col["syns"]].split(";") if s.strip()) if "syns" in col else ()
        labels[number] = Label(number, cells[col["name"]], primary, coverage, frequency, synonyms)
    return labels


def read_codes(root: Path, available: list[str], all_labels: dict[int, Label],
                notes: list[str]) -> dict[str, dict[int, float]]:
    """Per category with a c_<cat>.csv: label number -> its coverage there (number 0 rows are skipped, and rows of
    numbers label.csv lacks, each noted in `notes`)."""
    out = {}
    for cat in available:
        path = root / f"c_{cat}.csv"
        if not path.exists():
            continue
        header, rows = read_csv(path, CODE_COLUMNS, f"c_{cat}.csv maps category codes to labels: code,number,name,frequency,coverage.")
        at, cov = header.index("number"), header.index("coverage")
        coverage: dict[int, float] = {}
        for row, line, cells in rows:
            raw = cells[at].strip()
            if not DIGITS.match(raw):
                raise UserError(f"{where(path, row, line, 'number')}: {raw!r} is not a label number. "
                                "Fix the row.")
            if int(raw) and int(raw) not in all_labels:
                notes.append(f"{where(path, row, line, 'number')}: label {raw} is not in label.csv; row skipped")
                continue
            try:
                value = float(cells[cov].strip() or 0.0)
            except ValueError:
                raise UserError(f"{where(path, row, line, 'coverage')}: {cells[cov]!r} is not a number. Fix the row.") from None
            if int(raw):
                coverage[int(raw)] = max(value, coverage.get(int(raw), 0.0))
        out[cat] = coverage
    return out


def primary_by_coverage(all_labels: dict[int, Label], codes: dict[str, dict[int, float]]) -> dict[int, Label]:
    """Labels listed in some c_<cat>.csv take the category where their coverage is largest."""
    out = {}
    for number, label in all_labels.items():
        listed = [(coverage[number], -k, cat) for k, (cat, coverage) in enumerate(codes.items()) if number in coverage]
        out[number] = replace(label, category=max(listed)[2]) if listed else label
    return out


def categories(root: Path, columns: list[str]) -> tuple[list[str], dict[str, str]]:
    """(the categories, in order; index.csv columns that are not one -> why), as NetDissect-Lite decides it."""
    path = root / "category.csv"
    if not path.exists():
        coded = [c for c in columns if (root / f"c_{c}.csv").exists()]
        if not coded:  # a hand-built Broden with neither table: every column is a category
            return columns, {}
        return coded, {c: f"no category.csv and no c_{c}.csv" for c in columns if c not in coded}
    header, rows = read_csv(path, CATEGORY_COLUMNS, "category.csv lists the categories: name,first,last,count,frequency.")
    names: list[str] = []
    for row, line, cells in rows:
        name = cells[header.index("name")].strip()
        if name not in columns:
            raise UserError(f"{where(path, row, line, 'name')}: category {name!r} has no column in index.csv (its "
                            f"columns: {', '.join(columns) or 'none'}). Add the column (its cells may be empty) or "
                            "remove the row.")
        if not (root / f"c_{name}.csv").is_file():
            raise UserError(f"{where(path, row, line, 'name')}: category {name!r} has no c_{name}.csv beside it. "
                            f"Add c_{name}.csv (code,number,name,frequency,coverage) or remove the row.")
        if name not in names:
            names.append(name)
    return names, {c: "not listed in category.csv" for c in columns if c not in names}
