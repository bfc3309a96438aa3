"""The cluster configs pass Ray's own schema and defaults merge, and set up what a search node needs."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.commands import prepare_config
from ray.autoscaler._private.util import validate_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"aws": ROOT / "cluster.yaml", "gcp": ROOT / "cluster.gcp.yaml"}
GPU_MACHINES = {"aws": ("InstanceType", "p5.48xlarge"), "gcp": ("machineType", "a3-highgpu-8g")}
DOWNLOAD = "-m trainer data download --variant sp1024 --train-shards 80 --out /data/fineweb_sp1024"


def load(cloud: str) -> dict:
    return yaml.safe_load(CONFIGS[cloud].read_text())


@pytest.fixture(params=sorted(CONFIGS))
def cloud(request) -> str:
    return request.param


def test_raw_file_matches_the_schema_shipped_with_ray(cloud: str):
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load(cloud), schema)


def test_prepared_config_passes_rays_validation(cloud: str):
    # prepare_config merges the provider's defaults.yaml, as `ray up` does, without touching the cloud.
    validate_config(prepare_config(load(cloud)))


def test_gpu_workers_are_8_gpu_nodes_that_autoscale_from_zero(cloud: str):
    config = load(cloud)
    head = config["available_node_types"][config["head_node_type"]]
    gpu_types = {name: t for name, t in config["available_node_types"].items() if t["resources"].get("GPU", 0) > 0}
    assert head["resources"].get("GPU", 0) == 0, "the head is CPU-only by design"
    assert gpu_types, "no node type declares GPUs"
    key, machine = GPU_MACHINES[cloud]
    for node in gpu_types.values():
        assert node["resources"]["GPU"] == 8
        assert node["node_config"][key] == machine
        assert node["min_workers"] == 0 and node["max_workers"] >= 1
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())


def test_every_worker_installs_the_package_and_downloads_the_data(cloud: str):
    config = load(cloud)
    worker_commands = prepare_config(config)["worker_setup_commands"]  # global setup + worker-specific
    mounts = config["file_mounts"]
    synced = [remote for remote, local in mounts.items() if local == "."]
    assert synced, "the checkout must be synced to the nodes"
    assert any("install" in c and f"-e {synced[0]}" in c for c in worker_commands)
    assert any(DOWNLOAD in c for c in worker_commands)
    installs = [i for i, c in enumerate(worker_commands) if f"-e {synced[0]}" in c]
    downloads = [i for i, c in enumerate(worker_commands) if DOWNLOAD in c]
    assert installs[0] < downloads[0], "the data command needs the package installed first"


def test_results_go_to_documented_shared_storage(cloud: str):
    text = CONFIGS[cloud].read_text()
    scheme = {"aws": "s3://", "gcp": "gs://"}[cloud]
    assert f"--storage {scheme}YOUR-BUCKET/recurrence-search" in text
    setup = load(cloud)["setup_commands"]
    assert any(f"RECURRENCE_STORAGE={scheme}YOUR-BUCKET/recurrence-search" in c for c in setup)


def test_ray_runs_from_the_environment_the_package_is_installed_in(cloud: str):
    config = prepare_config(load(cloud))
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2
    assert all("~/rs-venv/bin/ray start" in c for c in starts)


def _flag(command: str, flag: str) -> str:
    words = shlex.split(command)
    return words[words.index(flag) + 1]


def test_the_readme_cluster_commands_read_the_data_where_the_workers_put_it(cloud: str):
    """The data folder and tokenizer the README's cluster commands pass are where every GPU node downloads them."""
    readme = (ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart"):readme.index("\n## ", readme.index("## Quickstart") + 3)]
    jobs = [" ".join(line.replace("\\\n", " ").split()) for line in
            re.findall(r"^ray job submit .*?(?<!\\)$", quickstart.replace("\\\n", " "), re.M)]
    runs = [j for j in jobs if " -m search run " in j]
    assert runs and all("--no-wait" in j.split(" -- ")[0] for j in jobs)  # jobs outlive the SSH session
    config = prepare_config(load(cloud))
    downloads = [c for c in config["worker_setup_commands"] if " data download " in c]
    head_downloads = [c for c in config.get("head_setup_commands", []) if " data download " in c]
    assert len(downloads) == 1 and not head_downloads  # only GPU nodes hold the data
    out = _flag(downloads[0], "--out")
    variant = _flag(downloads[0], "--variant")
    for job in runs:
        data, tokenizer = _flag(job, "--data"), _flag(job, "--tokenizer")
        assert data == out
        assert Path(tokenizer).parent == Path(out)
        assert Path(tokenizer).name == f"fineweb_{variant.removeprefix('sp')}_bpe.model"
    # The GPU node type declares the resource a rerun asks for.
    from search.rerun.remote import NODE_RESOURCE

    gpu = [t for t in config["available_node_types"].values() if t["resources"].get("GPU", 0) > 0]
    assert all(t["resources"].get(NODE_RESOURCE) == 1 for t in gpu)
    # The file's own usage lines say the same.
    text = CONFIGS[cloud].read_text()
    assert f"--data {out} --tokenizer {Path(out) / Path(tokenizer).name}" in text
