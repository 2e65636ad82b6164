"""The infra/ manifests parse and carry the fields a user or operator needs (no network, no docker).

Paths inside the image: the project is at /app (infra/Dockerfile), the shared inputs at /data and the
catalogs at /catalogs, with /app/data, /app/ckpt and /app/catalogs linked onto them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import posixpath
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
IMAGE_LINKS = {"/app/data": "/data", "/app/ckpt": "/data/ckpt", "/app/catalogs": "/catalogs"}
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
CRON_ITEM = re.compile(r"^(\*|(\w+)(-(\w+))?)(/(\d+))?$")
NAMES = {3: "jan feb mar apr may jun jul aug sep oct nov dec".split(), 4: "sun mon tue wed thu fri sat".split()}


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((INFRA / name).read_text()) if d]


def one(name: str, kind: str) -> dict:
    found = [d for d in docs(name) if d.get("kind") == kind]
    assert len(found) == 1, f"{name}: expected one {kind}, found {len(found)}"
    return found[0]


def ray_version() -> str:
    m = re.search(r"^ARG RAY_VERSION=(\S+)$", (INFRA / "Dockerfile").read_text(), re.M)
    assert m, "infra/Dockerfile: no `ARG RAY_VERSION=...`"
    return m.group(1)


def rayjob_spec() -> dict:
    return one("rayjob.yaml", "RayJob")["spec"]


def cron_value(field: int, value: str) -> int:
    names = NAMES.get(field, [])
    return names.index(value) + (field == 3) if value in names else int(value) if value.isdigit() else -1


def valid_cron(expr: str) -> bool:
    """Five fields of *, numbers (or names), ranges, steps and lists, each number within its field's range."""
    fields = expr.lower().split()
    items = [(i, CRON_ITEM.match(item)) for i, field in enumerate(fields) for item in field.split(",")]
    return len(fields) == 5 and all(m and all(CRON_RANGES[i][0] <= cron_value(i, v) <= CRON_RANGES[i][1]
                                              for v in filter(None, m.group(2, 4))) for i, m in items)


def job_file(command: str) -> tuple[str, dict]:
    """The job file a `neuron-catalog run /app/jobs/X.toml ...` command runs: its path in the image and its keys."""
    argv = shlex.split(command)
    assert argv[:2] == ["neuron-catalog", "run"], command
    assert argv[2].startswith("/app/jobs/") and argv[2].endswith(".toml"), command
    local = ROOT / argv[2][len("/app/"):]
    assert local.is_file(), f"{command}: {local.relative_to(ROOT)} is not in the repository"
    return argv[2], tomllib.loads(local.read_text())


def worker_inputs(keys: dict) -> list[str]:
    """The job's paths the Ray workers open themselves: the images and the concept set."""
    return [keys["data"]["images"]] + ([keys["concepts"]["broden"]] if "broden" in keys.get("concepts", {}) else [])


def in_image(job: str, value: str) -> str:
    """Where a path of the job file lands in the container (relative paths are relative to the job file)."""
    path = posixpath.normpath(posixpath.join(posixpath.dirname(job), value))
    for link, target in IMAGE_LINKS.items():
        if path == link or path.startswith(link + "/"):
            return target + path[len(link):]
    return path


def mount_of(path: str, mounts: dict[str, dict]) -> str | None:
    return next((m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/")), None)


def pod_mounts(template: dict) -> dict[str, dict]:
    """mountPath -> the volume (by name) of the pod's first container."""
    spec = template["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {m["mountPath"]: volumes[m["name"]] for m in spec["containers"][0].get("volumeMounts", [])}


def images(obj) -> list[str]:
    if isinstance(obj, dict):
        return [i for k, v in obj.items() for i in ([v] if k == "image" else images(v))]
    return [i for v in obj for i in images(v)] if isinstance(obj, list) else []


def test_cluster_yaml_has_head_gpu_workers_image_and_run_command():
    text = (INFRA / "cluster.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["cluster_name"] and cfg["provider"]["type"] in {"aws", "gcp", "azure"}
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for n, t in types.items() if n != cfg["head_node_type"] and t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu and all(t["max_workers"] > 0 and t.get("min_workers", 0) >= 1 for t in gpu)
    assert cfg["max_workers"] >= sum(t["max_workers"] for t in gpu)
    assert cfg["docker"]["image"]
    all_mounts = " ".join(cfg["docker"].get("run_options", []))
    head_mounts = all_mounts + " " + " ".join(cfg["docker"].get("head_run_options", []))
    runs = re.findall(r"ray job submit .*? -- (neuron-catalog run .*)$", text, re.M)
    assert runs, "cluster.yaml: no `ray job submit ... -- neuron-catalog run ...` command in its comments"
    job, keys = job_file(runs[0])
    for value in worker_inputs(keys):
        target = in_image(job, value).split("/")[1]
        assert f":/{target}:ro" in all_mounts, f"{value}: /{target} is not mounted on every node"
    assert f":/{in_image(job, keys['output']['catalog']).split('/')[1]}" in head_mounts
    spec = importlib.util.find_spec("ray")
    schema = spec and Path(spec.submodule_search_locations[0]) / "autoscaler" / "ray-schema.json"
    if schema and schema.is_file() and importlib.util.find_spec("jsonschema"):
        import jsonschema
        jsonschema.validate(cfg, json.loads(schema.read_text()))


def test_rayjob_runs_the_catalog_with_gpu_workers_and_shared_volumes():
    rayjob = one("rayjob.yaml", "RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    job, keys = job_file(spec["entrypoint"])
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0 < spec["activeDeadlineSeconds"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray_version()
    head = pod_mounts(cluster["headGroupSpec"]["template"])
    workers = cluster["workerGroupSpecs"]
    assert workers and all(w["groupName"] and w["replicas"] >= 1 for w in workers)
    assert any(int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
               for w in workers for c in w["template"]["spec"]["containers"])
    claims = {d["metadata"]["name"] for d in docs("rayjob.yaml") if d["kind"] == "PersistentVolumeClaim"}
    catalog = mount_of(in_image(job, keys["output"]["catalog"]), head)
    assert catalog, f"[output] catalog {keys['output']['catalog']} is on no volume of the head"
    assert head[catalog]["persistentVolumeClaim"]["claimName"] in claims
    if "weights" in keys["model"]:
        assert mount_of(in_image(job, keys["model"]["weights"]), head), "the weights are on no volume of the head"
    for value in worker_inputs(keys):
        path = in_image(job, value)
        data = mount_of(path, head)
        assert data, f"{value} ({path}) is on no volume of the head"
        claim = head[data]["persistentVolumeClaim"]["claimName"]
        assert claim in claims
        for w in workers:
            mounts = pod_mounts(w["template"])
            assert data in mounts, f"{path}: {data} is not mounted on worker group {w['groupName']}"
            assert mounts[data]["persistentVolumeClaim"]["claimName"] == claim


def test_cronjob_creates_a_rayjob_on_a_schedule_without_overlap():
    cron = one("cronjob-rayjob.yaml", "CronJob")
    assert cron["apiVersion"] == "batch/v1"
    assert valid_cron(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = " ".join(pod["containers"][0].get("command", []) + pod["containers"][0].get("args", []))
    m = re.search(r"kubectl create -f (\S+)", script)
    assert m, "the CronJob's pod does not `kubectl create -f` the RayJob"
    config_map = one("cronjob-rayjob.yaml", "ConfigMap")
    template = pod_mounts({"spec": pod})[posixpath.dirname(m.group(1))]
    assert template["configMap"]["name"] == config_map["metadata"]["name"]
    embedded = yaml.safe_load(config_map["data"][posixpath.basename(m.group(1))])
    assert embedded["kind"] == "RayJob" and embedded["apiVersion"] == "ray.io/v1"
    assert embedded["metadata"]["generateName"], "each run needs its own name: metadata.generateName"
    assert embedded["spec"] == rayjob_spec(), "the CronJob's RayJob drifted from infra/rayjob.yaml"
    account = pod["serviceAccountName"]
    assert one("cronjob-rayjob.yaml", "ServiceAccount")["metadata"]["name"] == account
    binding, role = one("cronjob-rayjob.yaml", "RoleBinding"), one("cronjob-rayjob.yaml", "Role")
    assert {"kind": "ServiceAccount", "name": account} in binding["subjects"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and {"create", "get"} <= set(r["verbs"])
               for r in role["rules"])


def test_raycronjob_is_kuberays_alpha_crd_with_the_same_rayjob():
    text = (INFRA / "raycronjob.yaml").read_text()
    assert "alpha" in text.lower() and "RayCronJob=true" in text and "cronjob-rayjob.yaml" in text
    cron = one("raycronjob.yaml", "RayCronJob")
    assert cron["apiVersion"] == "ray.io/v1"
    assert valid_cron(cron["spec"]["schedule"]), cron["spec"]["schedule"]
    assert cron["spec"]["jobTemplate"] == rayjob_spec(), "the RayCronJob's jobTemplate drifted from infra/rayjob.yaml"


def test_dockerfile_installs_pinned_torch_and_the_project():
    text = (INFRA / "Dockerfile").read_text()
    version = ray_version()
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-\$\{PYTHON_TAG\}-gpu$", text, re.M)
    assert "torch==2.14.1" in text and "torchvision==0.29.1" in text
    assert re.search(r"pip install [^\n]*\s\.\s", text), "the project is not pip-installed"
    for part in ("pipeline/", "catalog_schema/", "jobs/", "pyproject.toml", "README.md"):
        assert re.search(rf"^COPY .*\b{re.escape(part)}", text, re.M), f"{part} is not copied"
    assert not re.search(r"^COPY .*\b(ckpt|data|catalogs)\b", text, re.M), "weights/data must not be baked in"
    for link, target in IMAGE_LINKS.items():
        assert f"ln -s {target} {link}" in text
    assert "neuron-catalog" in re.findall(r"^CMD (.*)$", text, re.M)[-1]
    try:
        installed = importlib.metadata.version("ray")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("ray is not installed here")
    assert installed == version, f"the image's Ray {version} differs from the Ray {installed} tested here"


def test_image_tags_agree_with_each_other_and_the_dockerfile():
    version = ray_version()
    found = images(yaml.safe_load((INFRA / "cluster.yaml").read_text()))
    for name in ("rayjob.yaml", "cronjob-rayjob.yaml", "raycronjob.yaml"):
        found += images(docs(name))
    found += images(yaml.safe_load(one("cronjob-rayjob.yaml", "ConfigMap")["data"]["rayjob.yaml"]))
    ours = {i for i in found if "neuron-catalog" in i}
    assert len(ours) == 1, f"the manifests use different images: {sorted(ours)}"
    image = ours.pop()
    assert f"ray{version}" in image.rsplit(":", 1)[1], f"{image}: its tag does not name Ray {version}"
    assert f"-t {image} " in (INFRA / "Dockerfile").read_text(), "the Dockerfile's build command tags another image"
    assert len(found) - found.count(image) <= 1, "only the CronJob's kubectl pod may use another image"
