"""Driver failures and a full disk: SIGKILL the run in each stage and while it writes, with a reader
polling the catalog all along; fill the disk while writing. Nothing is lost, nothing is corrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from catalog_schema import ARRAYS, Catalog, CatalogError
from conftest import PLANTED_LAYERS, all_stages_job, job_toml, make_images, write_job
from pipeline.cli import main

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]  # each test kills or signals runs of its own


def _start(job: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """The run in a process group of its own, with an embedded Ray."""
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run", str(job)], env={**os.environ, "RAY_ADDRESS": ""},
                            stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True)


def _wait_for(proc: subprocess.Popen, ready, timeout: float) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert time.time() < deadline, "timed out waiting for the moment to interrupt"
        time.sleep(0.005)


def _kill_when(job: Path, ready, delay: float = 0.0, timeout: float = 240) -> None:
    """Run the job as a process group and SIGKILL it `delay` seconds after `ready()` first holds."""
    proc = _start(job)
    try:
        _wait_for(proc, ready, timeout)
        time.sleep(delay)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _tables(path: Path) -> dict[str, pd.DataFrame]:
    cat = Catalog.open(path)
    return {name: cat.table(name) for name in ("units", "examples", "spectrum", "images", "dissection", "shapley", "shapley_ablation")}


def _assert_same_catalog(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    for name in ta:
        pd.testing.assert_frame_equal(ta[name], tb[name], check_exact=True, obj=name)
    ca, cb = Catalog.open(a), Catalog.open(b)
    for group, kind in ARRAYS.items():
        for layer in ca.layers:
            assert ca.has_array(group, layer) == cb.has_array(group, layer)
            if ca.has_array(group, layer):
                np.testing.assert_array_equal(ca._array(kind, layer)[...], cb._array(kind, layer)[...], err_msg=f"{group}/{layer}")


# (stage, the checkpoints that show it is under way, how many to wait for)
ALL_STAGES = [
    ("activations", "activations-*/shard-*.pkl", 2),
    ("example crops", "crops-*/shard-*.pkl", 1),
    ("feature visualization", "featvis-*/shard-*.pkl", 2),
    ("projections", "projections-*/shard-*.pkl", 1),
    ("dissection thresholds", "dissection-thresholds-*/shard-*.pkl", 1),
    ("dissection tally", "dissection-tally-*/shard-*.pkl", 1),
    ("shapley", "shapley-*/rounds.pkl", 1),
]
# The sweep, sampled to keep `make test` within its budget: example crops resume as projections do (image chunks),
# feature visualization as the activations (the same fan-out, no object shared with the actors; test_node_failures
# leaves it out for that reason too) and the dissection's thresholds as its tally (checkpointed shards of one pass);
# NEURON_CATALOG_FULL_SWEEPS=1 runs all.
SAMPLED_OUT = {"example crops", "feature visualization", "dissection thresholds"}
STAGES = [s for s in ALL_STAGES if os.environ.get("NEURON_CATALOG_FULL_SWEEPS") == "1" or s[0] not in SAMPLED_OUT]


@pytest.mark.parametrize("stage,pattern,count", STAGES, ids=[s[0] for s in STAGES])
def test_a_run_killed_in_each_stage_resumes_to_the_same_catalog(tmp_path, capsys, undisturbed, stage, pattern, count):
    """SIGKILLed while the stage runs, the same command resumes to the undisturbed run's catalog; killed in Shapley,
    from its last checkpointed round (of 6)."""
    job = all_stages_job(tmp_path)
    work = tmp_path / "catalog" / ".work"
    _kill_when(job, lambda: len(list(work.glob(pattern))) >= count)
    assert not (tmp_path / "catalog" / "manifest.json").exists()
    assert main(["run", str(job)]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out  # the finished work was not redone
    if stage == "shapley":
        line = next(ln for ln in out.splitlines() if "resumed also" in ln)
        rounds = int(line.split("Shapley round(s)")[0].rsplit(",", 1)[-1].split(":")[-1])
        assert 1 <= rounds < 6
    _assert_same_catalog(tmp_path / "catalog", undisturbed)
    assert Catalog.open(tmp_path / "catalog").manifest["shapley"] == Catalog.open(undisturbed).manifest["shapley"]
    assert not work.exists() and not (tmp_path / "catalog" / ".staging").exists()


def _reader(path: Path, stop: threading.Event, seen: list, errors: list) -> None:
    """What a user's notebook does while the job runs: open the catalog and read its tables and arrays."""
    while not stop.is_set():
        try:
            cat = Catalog.open(path)
            units = pd.read_parquet(path / "units.parquet")
            pd.read_parquet(path / "examples.parquet")
            for layer in cat.layers:
                cat.example_images(layer, 0)
                cat.mean_map(layer)
            seen.append((cat.manifest["run_id"], len(units)))
        except CatalogError as exc:  # an array of a layer the reader's manifest does not know yet: never a torn file
            errors.append(f"CatalogError: {exc}")
        except Exception as exc:  # noqa: BLE001 - any other failure is a torn read
            errors.append(f"{type(exc).__name__}: {exc}")


def test_a_reader_never_sees_a_half_written_catalog_while_runs_are_killed(tmp_path, undisturbed):
    """The catalog exists (an earlier run with other settings); reruns are killed at moments spread over the
    write, one finishes; a reader polls all along. Every read finds whole files."""
    shutil.copytree(undisturbed, tmp_path / "catalog", symlinks=True)
    job = all_stages_job(tmp_path, patch=12)  # another patch size: every array and table is rewritten
    stop, seen, errors = threading.Event(), [], []
    reader = threading.Thread(target=_reader, args=(tmp_path / "catalog", stop, seen, errors))
    reader.start()
    try:
        staging = tmp_path / "catalog" / ".staging"
        for delay in (0.0, 0.02, 0.08, 0.2):
            _kill_when(job, staging.exists, delay)
        assert main(["run", str(job)]) == 0
        time.sleep(0.5)
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert len({run for run, _ in seen}) >= 2  # it read the old catalog and the new one
    assert Catalog.open(tmp_path / "catalog").example_images("conv1", 0)[0].shape[-2] == 12


def _mount_small_disk(path: Path, size: str) -> None:
    path.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")


def test_a_full_disk_while_writing_leaves_the_catalog_as_it_was(tmp_path, capsys):
    disk = tmp_path / "disk"
    _mount_small_disk(disk, "2000k")  # room for the first catalog (with its activation spectrum), not the second
    try:
        job = all_stages_job(disk, patch=8)
        assert main(["run", str(job)]) == 0
        before = {p.name: p.read_bytes() for p in (disk / "catalog").glob("*.*") if p.is_file()}
        run_id = Catalog.open(disk / "catalog").manifest["run_id"]
        job = all_stages_job(disk, patch=96)  # crops 144x larger: they no longer fit
        capsys.readouterr()
        assert main(["run", str(job)]) == 2
        err = capsys.readouterr().err
        assert "no space left" in err and "as it was before this run" in err and "Traceback" not in err
        after = {p.name: p.read_bytes() for p in (disk / "catalog").glob("*.*") if p.is_file()}
        assert after == before
        cat = Catalog.open(disk / "catalog")
        assert cat.manifest["run_id"] == run_id and cat.example_images("conv1", 0)[0].shape[-2] == 8
        assert not (disk / "catalog" / ".staging").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _signal_when(job: Path, ready, signum: int, timeout: float = 240) -> tuple[int, str, float]:
    """Run the job and send `signum` once `ready()` holds: SIGINT to the process group, as a terminal's Ctrl-C
    does, SIGTERM to the driver alone, as Kubernetes does. (exit code, stderr, seconds from signal to exit)."""
    proc = _start(job, stderr=subprocess.PIPE)
    try:
        _wait_for(proc, ready, timeout)
        sent = time.time()
        os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        return proc.returncode, err, time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# feature visualization: test_a_stop_does_not_wait_for_a_running_batch stops it, with batches that run for minutes
SIGNALLED = [(stage, pattern, count) for stage, pattern, count in STAGES if stage in ("activations", "shapley")]


def test_ctrl_c_or_sigterm_ends_with_one_line_and_resumes(tmp_path, capsys, undisturbed):
    """Stopped by Ctrl-C (SIGINT) in the activations, then (resumed) by a scheduler's SIGTERM in Shapley: each time
    one line and 128 + the signal within 10 s, no traceback, no Ray stack dump, the lock released; at last the same
    catalog. (One run takes both signals: each stopping a run is also checked by test_a_stop_does_not_wait...)"""
    job = all_stages_job(tmp_path)
    work = tmp_path / "catalog" / ".work"
    for (stage, pattern, count), signum in zip(SIGNALLED, (signal.SIGINT, signal.SIGTERM)):
        code, err, seconds = _signal_when(job, lambda: len(list(work.glob(pattern))) >= count, signum)
        assert code == 128 + signum, (stage, err)
        assert seconds < 10, f"{stage}: took {seconds:.1f} s to stop"
        assert "Traceback" not in err and "*** " not in err and "Stack trace" not in err, (stage, err)  # Ray's dumps
        line, = [ln for ln in err.splitlines() if "interrupted" in ln]
        assert f"are checkpointed in {work}; run the same command to resume" in line and " shards" in line, line
        assert stage != "shapley" or "Shapley round(s)" in line, line
        assert work.is_dir() and not (tmp_path / "catalog" / ".lock").exists()
    assert main(["run", str(job)]) == 0
    assert "resumed" in capsys.readouterr().out
    _assert_same_catalog(tmp_path / "catalog", undisturbed)


def _long_batch_job(folder: Path) -> Path:
    """The planted model with one featvis batch of all its units that would run for many minutes."""
    make_images(folder / "images", count=16)
    return write_job(folder, job_toml("planted", PLANTED_LAYERS, batch=2, k=3, patch=8, shard=2,
                                      featvis={"steps": 1_000_000, "size": 16, "batch_units": 16}))


def _group_gone(pgid: int, within: float) -> bool:
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_does_not_wait_for_a_running_batch(tmp_path, signum):
    """A featvis batch that would run for minutes: the stop ends it (the actors are killed) and the run exits within
    10 s with its one line, the activations' shards kept; no process of the run is left behind."""
    job = _long_batch_job(tmp_path)
    work = tmp_path / "catalog" / ".work"
    started = []

    def batch_running() -> bool:
        if not started and list(work.glob("featvis-*")):
            started.append(time.time())  # the pass's folder exists: its batch is submitted
        return bool(started) and time.time() - started[0] > 2
    proc = _start(job, stderr=subprocess.PIPE)
    try:
        _wait_for(proc, batch_running, timeout=240)
        sent = time.time()
        os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
        seconds = time.time() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert seconds < 10, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in err, err
    line, = [ln for ln in err.splitlines() if "interrupted" in ln]
    saved = len(list(work.glob("*/shard-*.pkl")))  # the activations' shards and the example crops' chunks
    assert line.startswith(f"neuron-catalog: interrupted ({signal.Signals(signum).name}): {saved} of the ") and \
        " shards begun" in line, line
    assert len(list(work.glob("activations-*/shard-*.pkl"))) == 8  # 16 images in shards of 2: all kept
    assert _group_gone(proc.pid, within=5), "a process of the stopped run is still alive"


@pytest.mark.parametrize("verb", ["run", "make-concepts"])
def test_ctrl_c_while_the_command_starts_is_one_line(tmp_path, verb):
    """SIGINT at several moments of start-up (Python importing torch, Ray, numpy, Pillow) and just after: exit 130
    and one line, no traceback, whatever the subcommand."""
    job = all_stages_job(tmp_path)
    args = {"run": ["run", str(job)], "make-concepts": ["make-concepts", str(tmp_path / "world"), "--images", "5000"]}[verb]
    for delay in (0.3, 0.8, 1.5):
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], env={**os.environ, "RAY_ADDRESS": ""},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        assert proc.returncode == 130, (delay, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, (delay, err)
        assert [ln for ln in err.splitlines() if ln.strip()] == [ln for ln in err.splitlines() if "interrupted (SIGINT)" in ln], err
