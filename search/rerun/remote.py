"""Rerun runs on a Ray cluster's GPU node instead of the machine the command was started on (a CPU head).

Each (config, seed) run is one Ray task that asks for the GPU node type: the whole node ({NODE_RESOURCE: 1} plus
its GPUs) when runs go one after another, or `--gpus` GPUs each with --parallel. On the node the task does what a
local rerun does (torchrun DDP over the GPUs Ray gave it, search.rerun.run.train_seed) in a scratch folder, and
returns the run folder's files, which the driver writes under --out; so finished runs are kept there exactly as in
a local rerun, and a failure loses only the run in flight. The data and tokenizer are the node's: checked there.
"""
from __future__ import annotations

import dataclasses
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from search.rerun.run import LAUNCH_LOG, Launch, RerunError, SeedRun, plan_launch, read_metrics, train_seed
from trainer.metrics import METRICS_FILE
from trainer.run_config import RunConfig, from_dict

NODE_RESOURCE = "node_8xh100"  # declared by cluster.yaml's GPU node type: one per 8xH100 node
WAIT_NOTE_S = 60.0


def _where() -> str:
    import ray

    return f"{socket.gethostname()} (Ray node {ray.get_runtime_context().get_node_id()})"


def _plan_on_node(data: str, tokenizer: str, gpus: int, cpu_procs: int, parallel: int, cpu_ok: bool,
                  smoke: bool) -> tuple[Launch | None, str, str]:
    """On the node: check the data and tokenizer, plan the launch; (launch, "", where) or (None, error, where)."""
    from trainer.data.check import check_data

    try:
        check_data(data, tokenizer)
        launch = plan_launch(gpus, cpu_procs, 1, cpu_ok, smoke)  # this task holds one run's resources
    except (ValueError, RerunError) as exc:
        return None, str(exc), _where()
    return dataclasses.replace(launch, where=_where(), slots=launch.slots * parallel), "", _where()


def _train_on_node(label: str, config: dict, run_name: str, data: str, tokenizer: str, gpus: int, cpu_procs: int,
                   cpu_ok: bool, smoke: bool) -> tuple[dict[str, bytes], str]:
    """On the node: train one run in a scratch folder; (its files by relative path, error or "")."""
    cfg = from_dict(config, where=f"{label} {run_name}")
    launch = plan_launch(gpus, cpu_procs, 1, cpu_ok, smoke)
    with tempfile.TemporaryDirectory(prefix="rerun_") as scratch:
        run_dir = Path(scratch) / run_name
        error = ""
        try:
            train_seed(label, cfg, run_dir, Path(data), Path(tokenizer), launch, sys.stdout)
        except RerunError as exc:
            error = str(exc)
        if run_dir.is_dir():
            with open(run_dir / LAUNCH_LOG, "a") as log:
                log.write(f"[rerun] trained on {_where()}\n")
        files = {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}
    return files, error


def _wait(task, what: str, terminal: TextIO | None):
    import ray

    started = time.monotonic()
    while not ray.wait([task], timeout=WAIT_NOTE_S)[0]:
        if terminal is not None:
            terminal.write(f"[rerun] {what}: still waiting for a node ({time.monotonic() - started:.0f} s; the "
                           "autoscaler may be starting one)\n")
            terminal.flush()
    return ray.get(task)


@dataclass(frozen=True)
class NodePlacement:
    """Where the runs go: Ray task options per run (resources that only the GPU node type has)."""

    options: dict
    describe: str

    def plan(self, data: Path, tokenizer: Path, gpus: int, cpu_procs: int, parallel: int, cpu_ok: bool,
             smoke: bool, terminal: TextIO | None) -> Launch:
        """The launch as the node sees it (its GPUs), after checking the data and tokenizer there."""
        import ray

        if terminal is not None:
            terminal.write(f"[rerun] runs go to a Ray node: {self.describe}\n")
            terminal.flush()
        task = ray.remote(_plan_on_node).options(**self.options).remote(
            str(data), str(tokenizer), gpus, cpu_procs, parallel, cpu_ok, smoke)
        launch, error, where = _wait(task, "checking the data", terminal)
        if error:
            raise RerunError(f"on {where}: {error}")
        return launch

    def trainer(self, gpus: int, cpu_procs: int, cpu_ok: bool, smoke: bool):
        """A train_seed look-alike that trains on the node and writes the run's files into run_dir here."""
        import ray

        def train_one(label: str, cfg: RunConfig, run_dir: Path, data: Path, tokenizer: Path, launch: Launch,
                      terminal: TextIO | None = sys.stdout, slot: str = ""):
            if (run_dir / METRICS_FILE).is_file():  # kept: train_seed checks and reads it, launching nothing
                return train_seed(label, cfg, run_dir, data, tokenizer, launch, terminal, slot)
            if terminal is not None:
                terminal.write(f"[rerun] {label} seed {cfg.train.seed}: training on {launch.where or 'a Ray node'}, "
                               f"budget {cfg.train.budget_s:g}s -> {run_dir}\n")
                terminal.flush()
            started_at = _now()
            task = ray.remote(_train_on_node).options(**self.options).remote(
                label, cfg.to_dict(), run_dir.name, str(data), str(tokenizer), gpus, cpu_procs, cpu_ok, smoke)
            files, error = _wait(task, f"{label} seed {cfg.train.seed}", terminal)
            if run_dir.exists():
                import shutil

                shutil.rmtree(run_dir)
            for name, content in files.items():
                (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
                (run_dir / name).write_bytes(content)
            if error:
                raise RerunError(f"on {launch.where or 'a Ray node'}: {error}"
                                 + (f"\n  its files (launch.log, train.log) are in {run_dir}" if files else ""))
            metrics = read_metrics(label, cfg.train.seed, run_dir)
            return SeedRun(label, run_dir, metrics, trained_now=True, started_at=started_at, finished_at=_now())

        return train_one


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def gpu_nodes(node_resource: str = NODE_RESOURCE) -> list[dict]:
    """Alive Ray nodes that declare node_resource."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(node_resource, 0) > 0]


def placement(gpus: int | None, parallel: int, node_resource: str = NODE_RESOURCE) -> tuple[NodePlacement, int]:
    """Ray options for each run and the GPUs per run: runs one after another take a whole GPU node (the node
    resource and its GPUs); with parallel > 1 each run asks for its `gpus` GPUs."""
    nodes = gpu_nodes(node_resource)
    node_gpus = max((int(n["Resources"].get("GPU", 0)) for n in nodes), default=None)
    if gpus is None:
        if node_gpus is None:
            node_gpus = 8
            sys.stdout.write(f"[rerun] no node with {node_resource} is up yet: assuming {node_gpus} GPUs per node "
                             f"(cluster.yaml's gpu_8xh100); pass --gpus to say otherwise\n")
        gpus = node_gpus // max(parallel, 1)
    if parallel == 1:
        whole = node_gpus if node_gpus is not None else gpus
        options = {"resources": {node_resource: 1}, "num_gpus": whole, "num_cpus": 1}
        return NodePlacement(options, f"each run takes a whole {node_resource} node ({options})"), gpus
    if gpus < 1:
        raise RerunError(f"--parallel {parallel} on a cluster: pass --gpus N, the GPUs each run asks Ray for")
    options = {"num_gpus": gpus, "num_cpus": 1}
    return NodePlacement(options, f"{parallel} runs at once, each asking Ray for {gpus} GPU(s)"), gpus
