"""cluster.yaml passes Ray's own cluster-config validation (no AWS calls), and jobs/rayjob.yaml is coherent."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from synthgen.cluster.jobrun import load_job_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster_config() -> dict:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def validated(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))  # merges Ray's AWS defaults; local, no credentials
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_ray_validation(cluster_config):
    prepared = validated(cluster_config)
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) > 0}
    assert {t["node_config"]["InstanceType"] for t in gpu_types.values()} >= {"g5.xlarge", "g5.12xlarge"}
    for t in gpu_types.values():
        assert t["min_workers"] == 0 and t["max_workers"] >= 1
    reachable = sum(min(t["max_workers"], prepared["max_workers"]) * t["resources"]["GPU"] for t in gpu_types.values())
    assert reachable >= 8  # `synthgen run --gpus 8` can be met by the autoscaler


def test_cluster_yaml_installs_synthgen_and_keeps_token_auth(cluster_config):
    prepared = validated(cluster_config)
    setup = " ".join(prepared["setup_commands"])
    assert "~/synthgen" in setup and "ray[default]==" in setup
    assert prepared["file_mounts"]["~/synthgen"] == "."
    assert "~/.ray/auth_token" in prepared["file_mounts"].values()
    for commands in (prepared["head_start_ray_commands"], prepared["worker_start_ray_commands"]):
        start = [c for c in commands if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    commands = [c for key, value in prepared.items() if key.endswith("_commands") for c in value]
    assert not [c for c in commands if "RAY_AUTH_MODE=disabled" in c]


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu_1x"].update(min_worker=1),  # a typo of min_workers
    lambda c: c["available_node_types"]["gpu_4x"].update(resources={"GPU": "four"}),
    lambda c: c.update(head_node_type="gpu_8x"),
    lambda c: c["available_node_types"]["gpu_1x"].update(node_config="g5.xlarge"),
    lambda c: c.update(idle_timeout_minute=5),
])
def test_a_broken_cluster_yaml_fails_validation(cluster_config, break_it):
    broken = copy.deepcopy(cluster_config)
    break_it(broken)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        validated(broken)


def test_rayjob_manifest_has_a_gpu_worker_group_and_a_valid_job_config(tmp_path):
    docs = list(yaml.safe_load_all((REPO / "jobs" / "rayjob.yaml").read_text()))
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    rayjob = next(d for d in docs if d["kind"] == "RayJob")
    assert rayjob["apiVersion"] == "ray.io/v1"
    spec = rayjob["spec"]
    assert "jobs/generate.py --config /etc/synthgen/job.json" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    groups = cluster["workerGroupSpecs"]
    gpus = [int(c["resources"]["limits"]["nvidia.com/gpu"]) * g["maxReplicas"]
            for g in groups for c in g["template"]["spec"]["containers"]]
    assert sum(gpus) >= 8
    head = cluster["headGroupSpec"]["template"]["spec"]
    mount = head["containers"][0]["volumeMounts"][0]
    volume = next(v for v in head["volumes"] if v["name"] == mount["name"])
    assert mount["mountPath"] == "/etc/synthgen" and volume["configMap"]["name"] == config_map["metadata"]["name"]
    job = tmp_path / "job.json"
    job.write_text(config_map["data"]["job.json"])
    config = load_job_file(str(job))  # what jobs/generate.py will read: valid RunConfig fields
    assert config.gpus == 8 and config.out.startswith("s3://")
