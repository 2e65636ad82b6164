"""Catalog histories: one catalog per run under `root/<UTC time>/`, and `root/latest` pointing at the newest.

The pointer is a relative symlink replaced with one rename, so a reader following `latest`
sees the previous catalog or the new one, never a catalog being written.
"""

from __future__ import annotations

import os
import uuid
from datetime import datetime, timezone
from pathlib import Path

from catalog_schema import LATEST, MANIFEST
from catalog_schema.layout import WORK
from pipeline.errors import UserError


def check_history_root(root: Path) -> None:
    """A history root holds run folders and `latest`; refuse a file or a plain catalog."""
    if root.exists() and not root.is_dir():
        raise UserError(f"output catalog {root} is a file; [output] history needs a directory for the run folders.")
    if (root / MANIFEST).exists():
        raise UserError(f"output catalog {root} is a single catalog, but the job sets [output] history = true, which "
                        f"writes {root}/<time>/ per run: choose another [output] catalog, or set history = false.")


def run_folder(root: Path) -> Path:
    """The folder this run writes: an interrupted run's (it holds checkpoints to resume from), else a new one."""
    unfinished = sorted(p for p in _runs(root) if not (p / MANIFEST).exists() and (p / WORK).is_dir())
    if unfinished:
        return unfinished[-1]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder, n = root / stamp, 1
    while folder.exists():
        folder, n = root / f"{stamp}-{n}", n + 1
    return folder


def latest(root: Path) -> Path | None:
    """The newest finished catalog of the history, or None before the first run finished."""
    link = root / LATEST
    return link.resolve() if (link / MANIFEST).exists() else None


def point_latest(root: Path, folder: Path) -> None:
    """Make `root/latest` point at `folder` with one atomic rename."""
    tmp = root / f".{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(folder.name, tmp, target_is_directory=True)
    os.replace(tmp, root / LATEST)


def finished_runs(root: Path) -> list[Path]:
    """The history's finished catalogs, oldest first (by their folders' UTC time, then the -N of a same-second run)."""
    def order(path: Path) -> tuple[str, int]:
        stamp, _, n = path.name.partition("-")
        return stamp, int(n) if n.isdigit() else 0
    return sorted((p for p in _runs(root) if (p / MANIFEST).exists()), key=order)


def _runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and p.name[:1].isdigit()]
