"""Worker failures on a real multi-node Ray (ray.cluster_utils.Cluster: several raylets on this machine):
a node holding a model actor is killed in the middle of each stage; the run completes and its catalog
equals an undisturbed run's (conftest's `undisturbed`, one actor: the catalog does not depend on the
number of workers). The three cases run one after the other in one process, on one cluster it starts
and stops (the test session's local Ray cannot be shared with one); the node killed in each case is
replaced before the next."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import all_stages_job
from test_interruptions import _assert_same_catalog

pytestmark = pytest.mark.slow  # a multi-node cluster in a process of its own

DRIVER = r"""
import json, sys, threading, time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster
import ray._private.state

from pipeline.job.load import load_job
from pipeline.registry import STAGES
from pipeline.run import run_job

cases = json.loads(sys.argv[1])  # [[job file, checkpoint glob, count], ...]: one run each, on this one cluster
# a dead node is noticed after about 1.5 s, not 15 (Ray's health check: 3 missed beats of 0.5 s)
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": {
    "health_check_period_ms": 500, "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}})
nodes = [cluster.add_node(num_cpus=2) for _ in range(3)]  # two actors of 2 CPUs, one spare node for a restart
cluster.wait_for_nodes()
ray.init(address=cluster.address, logging_level="ERROR")


def idle() -> bool:
    free = ray._private.state.available_resources_per_node()
    return all(free.get(node.node_id, {}).get("CPU", 0) == 2 for node in nodes)


def kill_a_worker_node(work, pattern, count, killed, finished):
    while not finished.is_set() and len(list(work.glob(pattern))) < count:
        time.sleep(0.01)
    if finished.is_set():
        return  # the stage ended first: nothing killed, and the test says so
    # a node whose CPUs are all taken holds a model actor (each takes a whole node); the state API would
    # need the dashboard, which this cluster does not run
    free = ray._private.state.available_resources_per_node()
    hosts = {node_id for node_id, res in free.items() if res.get("CPU", 0) == 0}
    for node in nodes:
        if node.node_id in hosts:
            cluster.remove_node(node, allow_graceful=False)
            killed.append(node)
            return


for job_path, pattern, count in cases:
    job = load_job(job_path, STAGES)
    killed, finished = [], threading.Event()
    killer = threading.Thread(target=kill_a_worker_node,
                              args=(job.output.catalog / ".work", pattern, count, killed, finished))
    killer.start()
    try:
        result = run_job(job)
    finally:
        finished.set()
        killer.join()
    report = json.dumps({"job": job_path, "killed": len(killed), "catalog": str(result.catalog)})
    sys.stdout.write(report + "\n")  # one write: Ray's log lines share this stdout
    sys.stdout.flush()
    for node in killed:  # the next run gets three whole nodes again, all free: the killer must find its actors
        nodes.remove(node)
        nodes.append(cluster.add_node(num_cpus=2))
    cluster.wait_for_nodes()
    deadline = time.time() + 60
    while not idle() and time.time() < deadline:
        time.sleep(0.05)
ray.shutdown()
cluster.shutdown()
"""

# featvis's passes go through the same fan-out as the activations' (no object shared with the actors): not repeated
STAGES = [
    ("activations", "activations-*/shard-*.pkl", 2),
    ("dissection", "dissection-tally-*/shard-*.pkl", 1),
    ("shapley", "shapley-*/rounds.pkl", 1),
]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    """Every case's run, one after the other on one cluster (started once: it takes about 10 s): stage -> report."""
    root = tmp_path_factory.mktemp("node-failures")
    cases = {stage: [str(all_stages_job(root / stage, workers=2)), pattern, count] for stage, pattern, count in STAGES}
    script = root / "driver.py"
    script.write_text(DRIVER)
    env = {**os.environ, "RAY_ADDRESS": ""}
    done = subprocess.run([sys.executable, str(script), json.dumps(list(cases.values()))], capture_output=True,
                          text=True, env=env, timeout=900, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    reports = [json.JSONDecoder().raw_decode(ln)[0] for ln in done.stdout.splitlines() if ln.startswith('{"job"')]
    found = {report["job"]: report for report in reports}
    return {stage: found.get(job) for stage, (job, _, _) in cases.items()}


@pytest.mark.parametrize("stage", [s[0] for s in STAGES])
def test_a_node_killed_in_each_stage_costs_nothing(reports, undisturbed, stage):
    report = reports[stage]
    assert report is not None, f"the {stage} case's run did not finish"
    assert report["killed"] == 1, "no node was killed: the stage ended before the kill"
    _assert_same_catalog(Path(report["catalog"]), undisturbed)
