"""User mistakes end with exit code 2 and a message naming the key or file; unreadable images are skipped and recorded."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import make_images, planted_job, planted_toml, write_job
from pipeline.catalog import lock as run_lock
from pipeline.cli import main


def _run(job, capsys) -> tuple[int, str]:
    code = main(["run", str(job)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("[data]", "[data]\nimagez = 'x'"), "unknown job key 'data.imagez'. Did you mean 'images'?"),
    (lambda t: t.replace("batch_size = 4", "batch_size = 'four'"), "'data.batch_size' must be an integer, got 'four'"),
    (lambda t: t.replace("k = 4", "k = 0"), "'stages.activations.k' must be at least 1"),
    (lambda t: t.replace("k = 4", "k = 4\nspectrum_quantiles = -1"),
     "'stages.activations.spectrum_quantiles' must be 0 (no activation spectrum) or more, got -1"),
    (lambda t: t.replace("k = 4", "k = 4\nspectrum_quantiles = 'eight'"),
     "'stages.activations.spectrum_quantiles' must be an integer, got 'eight'"),
    (lambda t: t.replace("k = 4", "k = 4\nspectrum_k = 0"), "'stages.activations.spectrum_k' must be at least 1"),
    (lambda t: t.replace("k = 4", "k = 4\nspectrum_memory_mb = 0"), "'stages.activations.spectrum_memory_mb' must be at least 1"),
    (lambda t: t.replace('images = "images"', 'images = "nowhere"'), "'data.images' points to"),
    (lambda t: t.replace('"conv1", "conv2"', '"conv9", "conv2"'), "no module named 'conv9'. Closest names: conv2, conv1"),
    (lambda t: t.replace("tiny_models.py:planted", "missing.py:planted"), "'model.factory' points to"),
    (lambda t: t.replace("tiny_models.py:planted", "tiny_models.py:nothing"), "has no function 'nothing'"),
    (lambda t: t.replace("[ray]", "[ray]\n[ray]"), "is not valid TOML"),
    (lambda t: t.replace("[stages.activations]", "[stages.featviz]\n[stages.activations]"), "Did you mean 'featvis'?"),
    (lambda t: t.replace('factory = "tiny_models.py:planted"', 'torchvision = "resnet81"'), "Closest: resnet18"),
    (lambda t: t.replace("[ray]", "[stages.dissection]\nunion = 'pixel'\n[ray]"),
     "'stages.dissection.union' must be 'netdissect-lite' or 'image', got 'pixel'"),
    (lambda t: t.replace("[ray]", "[stages.dissection]\nresize = 'nearest'\n[ray]"),
     "'stages.dissection.resize' must be 'netdissect-lite' or 'bilinear', got 'nearest'"),
    (lambda t: t.replace("[ray]", "[stages.unit_map]\nmethod = 'umap'\n[ray]"),
     "'stages.unit_map.method' must be one of pacmap, pca, got 'umap'"),
    (lambda t: t.replace("[ray]", "[stages.class_pages]\ntop = 0\n[ray]"), "'stages.class_pages.top' must be at least 1"),
    (lambda t: t.replace("[ray]", "[stages.class_pages]\nlayer = 'conv1'\n[ray]"),
     "'stages.class_pages.layer' = 'conv1' must be a cataloged layer with a feature grid and 6 units (the channels fc "
     "reads); candidates: conv2"),
])
def test_bad_job_files_exit_2_naming_the_key(tmp_path, capsys, edit, expected):
    job = planted_job(tmp_path)
    job.write_text(edit(job.read_text()))
    code, err = _run(job, capsys)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err
    assert not (tmp_path / "catalog" / "manifest.json").exists()


def test_command_line_prints_no_traceback(tmp_path):
    job = planted_job(tmp_path)
    job.write_text(job.read_text().replace('"conv1"', '"conv1x"'))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(job)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "conv1x" in proc.stderr and "Traceback" not in proc.stderr


def test_weights_of_another_architecture_are_refused(tmp_path, capsys):
    job = planted_job(tmp_path)
    torch.save({"conv1.weight": torch.zeros(4, 3, 5, 5), "extra.bias": torch.zeros(2)}, tmp_path / "w.pt")
    job.write_text(job.read_text().replace('layers =', 'weights = "w.pt"\nlayers ='))
    code, err = _run(job, capsys)
    assert code == 2 and "does not fit the model" in err
    assert 'Unexpected key(s) in state_dict: "extra.bias"' in err and 'Missing key(s) in state_dict: "conv1.bias"' in err
    assert "size mismatch for conv1.weight" in err


def test_pickled_checkpoint_needing_code_is_refused(tmp_path, capsys):
    job = planted_job(tmp_path)
    torch.save({"conv1.weight": np.zeros(3)}, tmp_path / "w.pt")  # a numpy array needs pickle's code execution
    job.write_text(job.read_text().replace('layers =', 'weights = "w.pt"\nlayers ='))
    code, err = _run(job, capsys)
    assert code == 2 and "weights_only=True" in err


def test_no_files_at_all_is_an_error(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    job = write_job(tmp_path, planted_toml())
    code, err = _run(job, capsys)
    assert code == 2 and "holds no files" in err


@pytest.mark.usefixtures("ray_local")
def test_unreadable_files_are_skipped_and_recorded_and_odd_modes_are_used(tmp_path, capsys):
    images = tmp_path / "images"
    make_images(images, count=6, classes=())
    (images / "empty.png").write_bytes(b"")
    (images / "notes.txt").write_text("not an image")
    good = (images / "img_000.png").read_bytes()
    (images / "truncated.png").write_bytes(good[: len(good) // 2])
    gray = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60
    Image.fromarray(gray).save(images / "gray16.png")  # 16-bit grayscale
    Image.fromarray(np.full((32, 32, 4), 200, np.uint8)).save(images / "rgba.png")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).convert("P").save(images / "palette.png")
    Image.fromarray(np.full((32, 32), 30, np.uint8)).save(images / "gray8.jpg")
    job = write_job(tmp_path, planted_toml())
    assert main(["run", str(job)]) == 0
    out = capsys.readouterr().out
    assert "skipped 3" in out
    manifest = json.loads((tmp_path / "catalog" / "manifest.json").read_text())
    assert sorted(s["path"] for s in manifest["data"]["skipped"]) == ["empty.png", "notes.txt", "truncated.png"]
    assert manifest["data"]["used"] == 10
    table = pd.read_parquet(tmp_path / "catalog" / "images.parquet")
    assert table["skipped"].sum() == 3 and table.loc[table["skipped"], "skip_reason"].notna().all()


@pytest.mark.usefixtures("ray_local")
def test_only_unreadable_files_is_an_error(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"garbage")
    job = write_job(tmp_path, planted_toml())
    code, err = _run(job, capsys)
    assert code == 2 and "none of its 1 files could be read" in err


def test_a_newer_catalog_schema_is_refused(tmp_path, capsys):
    from catalog_schema import SCHEMA_VERSION

    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 1}))
    assert main(["describe", str(tmp_path / "cat")]) == 2
    assert "newer than this neuron-catalog understands" in capsys.readouterr().err


def test_writing_into_a_foreign_directory_is_refused(tmp_path, capsys):
    job = planted_job(tmp_path)
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "thesis.tex").write_text("precious")
    code, err = _run(job, capsys)
    assert code == 2 and "not a catalog" in err
    assert (tmp_path / "catalog" / "thesis.tex").read_text() == "precious"


@pytest.mark.usefixtures("ray_local")
def test_a_second_run_on_the_same_catalog_is_refused_naming_the_holder(tmp_path, capsys):
    job = planted_job(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "catalog").mkdir()
        lock = {"host": socket.gethostname(), "pid": holder.pid, "started": "2026-11-23T10:00:00+00:00",
                "command": "neuron-catalog run job.toml"}
        (tmp_path / "catalog" / ".lock").write_text(json.dumps(lock))
        code, err = _run(job, capsys)
        assert code == 2 and f"pid {holder.pid} on {socket.gethostname()}, started 2026-11-23T10:00:00" in err
        assert "delete" in err and (tmp_path / "catalog" / ".lock").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale and taken over; the run succeeds and releases it
    code, _ = _run(job, capsys)
    assert code == 0 and not (tmp_path / "catalog" / ".lock").exists()
    assert (tmp_path / "catalog" / "manifest.json").exists()


def test_a_live_lock_from_another_host_is_not_broken(tmp_path, capsys):
    job = planted_job(tmp_path)
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / ".lock").write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "x", "command": "y"}))
    code, err = _run(job, capsys)
    assert code == 2 and "another run on another host (its lock was refreshed" in err and "pid 1 on elsewhere" in err


@pytest.mark.usefixtures("ray_local")
def test_an_abandoned_lock_from_another_host_is_taken_over(tmp_path, capsys):
    """A Kubernetes head pod that died leaves a lock no later pod's host matches; without heartbeats it goes stale."""
    job = planted_job(tmp_path)
    (tmp_path / "catalog").mkdir()
    lock = tmp_path / "catalog" / ".lock"
    lock.write_text(json.dumps({"host": "head-pod-gone", "pid": 1, "started": "x", "command": "y"}))
    old = time.time() - run_lock.STALE_AFTER_S - 5
    os.utime(lock, (old, old))
    code, _ = _run(job, capsys)
    assert code == 0 and not lock.exists() and (tmp_path / "catalog" / "manifest.json").exists()


def test_the_holder_keeps_its_lock_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lock, "HEARTBEAT_S", 0.05)
    with run_lock.catalog_lock(tmp_path / "catalog") as lock:
        old = time.time() - 1000
        os.utime(lock, (old, old))
        time.sleep(0.5)
        assert time.time() - lock.stat().st_mtime < 5
