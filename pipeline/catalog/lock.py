"""One run per catalog at a time: a lock file in the catalog naming its holder (host, pid, start).

Created with O_EXCL, so two runs cannot both hold it. The holder touches the file every
HEARTBEAT_S seconds. A lock is stale, and taken over (moved aside atomically first, so of two runs
finding it only one wins), when its process is gone from this host, or when it was left on another
host (a Kubernetes head pod that died) and has not been touched for STALE_AFTER_S seconds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from catalog_schema.layout import LOCK
from pipeline.errors import UserError

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # 20 missed heartbeats: the holder is gone (or hung beyond recovery)


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
            dead = same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"])
            if dead or (not same_host and _silent_for(path) > STALE_AFTER_S):
                try:  # stale: move it aside; if another run moved it first, try again
                    os.replace(path, catalog / f"{LOCK}.stale-{os.getpid()}")
                    (catalog / f"{LOCK}.stale-{os.getpid()}").unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            where = "" if same_host else (f" on another host (its lock was refreshed {_silent_for(path):.0f} s ago; it "
                                          f"counts as abandoned after {STALE_AFTER_S:.0f} s without a refresh)")
            raise UserError(f"catalog {catalog} is being written by another run{where}: {_describe(holder)}. Wait for it "
                            f"to finish, or, if that process is gone, delete {path} and run again.") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise UserError(f"could not take the lock {path}: other runs keep taking it; try again.")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(path, me, stop), daemon=True, name="catalog-lock-heartbeat")
    beat.start()
    try:
        yield path
    finally:
        stop.set()
        beat.join()
        if _holder(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created and not any(catalog.iterdir()):  # a run that failed before writing anything leaves nothing
            catalog.rmdir()


def _silent_for(path: Path) -> float:
    """Seconds since the lock was last touched by its holder."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _heartbeat(path: Path, me: dict, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT_S):
        if _holder(path).get("pid") == me["pid"] and _holder(path).get("host") == me["host"]:
            try:
                os.utime(path)
            except FileNotFoundError:
                return
