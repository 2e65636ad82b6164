"""Worker failures on a real multi-node Ray (ray.cluster_utils.Cluster: several raylets on this machine):
a node holding a model actor is killed in the middle of each stage; the run completes and its catalog
equals an undisturbed run's (conftest's `undisturbed`, one actor: the catalog does not depend on the
number of workers). Each case runs in its own process, which starts and stops its own cluster
(the test session's local Ray cannot be shared with one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import all_stages_job
from test_interruptions import _assert_same_catalog

pytestmark = pytest.mark.slow  # four multi-node clusters, each in a process of its own

DRIVER = r"""
import json, sys, threading, time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
import ray._private.state

from pipeline.job.load import load_job
from pipeline.run import run_job

job_path, pattern, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
nodes = [cluster.add_node(num_cpus=2) for _ in range(3)]  # two actors of 2 CPUs, one spare node for a restart
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR")
job = load_job(job_path)
work = job.path.parent / out.name / ".work"
killed = []

def kill_a_worker_node():
    deadline = time.time() + 300
    while time.time() < deadline and len(list(work.glob(pattern))) < count:
        time.sleep(0.01)
    # a node whose CPUs are all taken holds a model actor (each takes a whole node); the state API would
    # need the dashboard, which this cluster does not run
    free = ray._private.state.available_resources_per_node()
    hosts = {node_id for node_id, res in free.items() if res.get("CPU", 0) == 0}
    for node in nodes:
        if node.node_id in hosts:
            cluster.remove_node(node, allow_graceful=False)
            killed.append(node.node_id)
            return

threading.Thread(target=kill_a_worker_node, daemon=True).start()
result = run_job(job, out=out)
print(json.dumps({"killed": len(killed), "catalog": str(result.catalog)}))
ray.shutdown()
cluster.shutdown()
"""

STAGES = [
    ("activations", "activations-*/shard-*.pkl", 2),
    ("featvis", "featvis-*/shard-*.pkl", 2),
    ("dissection", "dissection-tally-*/shard-*.pkl", 1),
    ("shapley", "shapley-*/rounds.pkl", 1),
]


@pytest.mark.parametrize("stage,pattern,count", STAGES, ids=[s[0] for s in STAGES])
def test_a_node_killed_in_each_stage_costs_nothing(tmp_path, undisturbed, stage, pattern, count):
    job = all_stages_job(tmp_path, workers=2)
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, str(script), str(job), pattern, str(count), str(tmp_path / "catalog")],
                          capture_output=True, text=True, env=env, timeout=600, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith('{"killed"')]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(lines[-1])
    assert report["killed"] == 1, "no node was killed: the stage ended before the kill"
    _assert_same_catalog(tmp_path / "catalog", undisturbed)
