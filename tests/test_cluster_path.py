"""The cluster path, end to end on one machine, as cluster.yaml lays it out: a head node with no CPUs for trials and
no data, and a worker node that declares the GPU node type's resource (node_8xh100) and holds the data.

The search is submitted through Ray's Jobs API while no worker is up and the data does not exist yet; the driver
checks the data with a Ray task that waits for a node where trials run. The test then makes the data and starts the
worker, as a GPU node's setup commands would, and the search runs there. `status` and `report` read the same
storage; a rerun started outside the cluster lands on the worker by its resource; a full-scale rerun is refused
there, because the node has no GPU."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the Jobs API needs Ray's dashboard: pip install -e '.[test]' (ray[default])")

from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402
from ray.util.state import list_nodes  # noqa: E402

from trainer.data.smoke import smoke_data  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NODE_RESOURCE = "node_8xh100"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head and worker nodes started with `ray start`, each in its own process group (killed at the end)."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(REPO)}
        self.env.pop("RAY_ADDRESS", None)
        self.groups: list[int] = []
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        log = self.root / f"{name}.log"
        proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", "start", "--node-ip-address=127.0.0.1",
                                 "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                                 f"--metrics-export-port={free_port()}", *args],
                                cwd=self.root, env=self.env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.groups.append(proc.pid)
        assert proc.wait(timeout=180) == 0, log.read_text()[-3000:]

    def start_head(self) -> None:
        self._start("head", ["--head", f"--port={self.gcs_port}", "--num-cpus=0", f"--temp-dir={self.root}/ray",
                             "--include-dashboard=true", f"--dashboard-port={self.dashboard_port}",
                             "--dashboard-host=127.0.0.1", f"--ray-client-server-port={free_port()}"])

    def start_worker(self) -> None:
        self._start("worker", [f"--address={self.address}", "--num-cpus=2",
                               f"--resources={json.dumps({NODE_RESOURCE: 1})}"])

    def node_with(self, resource: str) -> str:
        nodes = [n for n in list_nodes(address=self.dashboard, detail=True)
                 if n.state == "ALIVE" and resource in (n.resources_total or {})]
        assert len(nodes) == 1, nodes
        return nodes[0].node_id

    def stop(self) -> None:
        for group in self.groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def cluster():
    root = Path(tempfile.mkdtemp(prefix="rsc", dir="/tmp"))  # short: Ray's socket paths live under it
    c = LocalCluster(root)
    try:
        c.start_head()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


def run_cli(cluster: LocalCluster, *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", *argv], cwd=cluster.root, env=cluster.env,
                          capture_output=True, text=True, timeout=timeout)


def test_search_job_checks_data_on_the_worker_and_reruns_land_there(cluster, tmp_path):
    built = smoke_data(tmp_path / "cache", progress=lambda _: None)
    data, tokenizer = cluster.root / "node_data", cluster.root / "node_data" / built.tokenizer.name
    storage = cluster.root / "storage"
    client = JobSubmissionClient(cluster.dashboard)
    job = client.submit_job(
        entrypoint=f"{sys.executable} -m search run --smoke --name onjob --trials 3 --storage {storage} "
                   f"--data {data} --tokenizer {tokenizer}",
        runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}})

    def wait_for(what: str, ready, limit_s: float = 300) -> None:
        deadline = time.time() + limit_s
        while not ready():
            status = client.get_job_status(job)
            assert not status.is_terminal(), f"job {status} while waiting for {what}:\n" + client.get_job_logs(job)
            assert time.time() < deadline, f"timed out waiting for {what}:\n" + client.get_job_logs(job)
            time.sleep(1)

    # The head holds no data and runs no trial: the driver's check waits for a node where trials run.
    wait_for("the data check to wait for a node", lambda: "checking them on a node where trials run" in
             client.get_job_logs(job))
    assert not data.exists()
    shutil.copytree(built.data_dir, data)  # the worker's setup (cluster.yaml: worker_setup_commands)
    cluster.start_worker()
    worker = cluster.node_with(NODE_RESOURCE)
    deadline = time.time() + 600
    while not client.get_job_status(job).is_terminal():
        assert time.time() < deadline, client.get_job_logs(job)
        time.sleep(2)
    logs = client.get_job_logs(job)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED, logs[-4000:]
    assert f"data checked on {socket.gethostname()} (Ray node {worker})" in logs

    # The driver ran as a job; its storage is read from outside it.
    status = run_cli(cluster, "status", "onjob", "--storage", str(storage))
    assert status.returncode == 0 and "complete" in status.stdout and " 0 running;" in status.stdout, status.stdout
    report = run_cli(cluster, "report", "onjob", "--storage", str(storage))
    assert report.returncode == 0 and (storage / "onjob" / "report" / "report.md").is_file()

    # A rerun started outside the cluster trains on the node that declares the GPU node type's resource.
    rerun = run_cli(cluster, "rerun", "onjob", "--best", "--seeds", "1", "--no-baseline", "--storage", str(storage),
                    "--ray-address", cluster.address, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"each run takes a whole {NODE_RESOURCE} node" in rerun.stdout
    (result,) = (storage / "onjob").glob("rerun_trial*/rerun.json")
    info = json.loads(result.read_text())
    assert info["smoke"] is True and worker in info["node"]
    launch_log = (result.parent / "candidate" / "seed1337" / "launch.log").read_text()
    assert f"trained on {socket.gethostname()} (Ray node {worker})" in launch_log
    assert (result.parent / "candidate" / "seed1337" / "model.ptz").is_file()

    # A full-scale run asks for 8 GPUs; the node that has the resource has none: refused there, in one line.
    refused = run_cli(cluster, "rerun", "full", "--config", str(REPO / "spaces" / "presets" / "baseline.yaml"),
                      "--gpus", "8", "--seeds", "1", "--no-baseline", "--ray-address", cluster.address,
                      "--data", str(data), "--tokenizer", str(tokenizer), "--out", str(cluster.root / "refused"))
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: on ") and "Traceback" not in refused.stderr, refused.stderr
    assert f"(Ray node {worker})" in line and "--gpus 8 asks for GPUs" in line
    assert "has no CUDA GPU" in line and "--smoke" in line
    assert not (cluster.root / "refused" / "candidate" / "seed1337" / "metrics.json").exists()


def test_a_full_rerun_on_a_machine_without_gpus_or_cluster_is_refused(tmp_path, tiny_corpus):
    from tests.conftest import TINY_MODEL, TINY_TRAIN
    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": TINY_MODEL, "train": TINY_TRAIN}))
    # RAY_ADDRESS=local: no cluster to join, as on a laptop (Ray's own lookup would find any cluster that others
    # run on this machine).
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": "local"}
    proc = subprocess.run([sys.executable, "-m", "search", "rerun", "laptop", "--config", str(config), "--seeds", "1",
                           "--no-baseline", "--data", str(tiny_corpus["data"]), "--tokenizer",
                           str(tiny_corpus["tokenizer"]), "--out", str(tmp_path / "out")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.startswith("error: no --gpus was given but") and proc.stderr.count("\n") == 1
    assert "--ray-address" in proc.stderr and "--smoke" in proc.stderr and "--gpus 0" in proc.stderr
    assert not (tmp_path / "out" / "candidate" / "seed1337").exists()
