"""One run per catalog at a time: a lock file in the catalog naming its holder (host, pid, start).

Created with O_EXCL, so two runs cannot both hold it. A lock left by a process that died on this
host is taken over (moved aside atomically first, so of two runs finding it only one wins); a lock
held on another host is never broken automatically: the message says how to remove it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from pipeline.errors import UserError

LOCK = ".lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {holder.get('started', '?')}"
            f" ({holder.get('command', '?')})")


@contextmanager
def catalog_lock(catalog: Path) -> Iterator[Path]:
    """Hold CATALOG/.lock for the duration; UserError when another live run holds it."""
    created = not catalog.exists()
    catalog.mkdir(parents=True, exist_ok=True)
    path = catalog / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(),
          "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv[:3])}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            same_host = holder.get("host") == me["host"]
            if same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
                try:  # stale: move it aside; if another run moved it first, try again
                    os.replace(path, catalog / f"{LOCK}.stale-{os.getpid()}")
                    (catalog / f"{LOCK}.stale-{os.getpid()}").unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            where = "" if same_host else " on another host"
            raise UserError(f"catalog {catalog} is being written by another run{where}: {_describe(holder)}. Wait for it "
                            f"to finish, or, if that process is gone, delete {path} and run again.") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"could not take the lock {path}: other runs keep taking it; try again.")
    try:
        yield path
    finally:
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created and not any(catalog.iterdir()):  # a run that failed before writing anything leaves nothing
            catalog.rmdir()
