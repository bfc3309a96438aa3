"""How many CPU trials fit at once: the peak-memory estimate against real runs' measured peak, and the cap."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.settings import SettingsError
from search.tune import capacity
from search.tune.capacity import (
    NodeRoom, largest_config, trial_memory_bytes, trials_memory_holds, trials_that_fit,
)
from tests.search_fixtures import tiny_settings, write_space
from trainer.run_config import from_dict, smoke_version

REPO = Path(__file__).resolve().parents[1]
GIB = 1 << 30


# Linux keeps a process's peak RSS across exec, and a child started by fork or vfork starts out with its parent's
# memory: measured straight from pytest, the peak is at least pytest's own (0.70 GiB late in a full run). A bare
# python process (~10 MB) therefore forks and execs the trainer and reports that child's own ru_maxrss.
LAUNCHER = """\
import os, sys
pid = os.fork()
if pid == 0:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def child_peak_rss_bytes(args: list[str]) -> int:
    """Peak resident bytes of `python *args` itself, whatever this process holds."""
    proc = subprocess.run([sys.executable, "-c", LAUNCHER, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout) * 1024  # kilobytes on Linux


def peak_rss_bytes(config: dict, corpus: dict, out: Path) -> int:
    """Peak resident bytes of `python -m trainer train` on config (training, evaluation and export)."""
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(config))
    return child_peak_rss_bytes(["-m", "trainer", "train", "--config", str(path), "--data", str(corpus["data"]),
                                 "--tokenizer", str(corpus["tokenizer"]), "--out", str(out), "--device", "cpu"])


def test_the_measured_peak_is_the_childs_own_not_this_process():
    import numpy as np

    held = np.ones(512 << 20, dtype=np.uint8)  # 512 MiB resident here while the child runs
    child_s = "import numpy; a = numpy.ones(64 << 20, dtype=numpy.uint8)"  # a child that touches 64 MiB
    measured = child_peak_rss_bytes(["-c", child_s])
    assert held.sum() == 512 << 20
    assert 64 << 20 < measured < 200 << 20  # the child's 64 MiB plus an interpreter with numpy, not 512 MiB more


TRAIN = {"compile": False, "compile_warmup_steps": 0, "max_steps": 2, "warmdown_steps": 1, "log_every_steps": 1,
         "seq_len": 256, "val_prefix_tokens": 256}


@pytest.mark.parametrize("name, model, train", [
    # Activations dominate: micro-batches of 16k tokens through 3 virtual layers.
    ("activations", {"model_dim": 128, "num_heads": 2, "num_kv_heads": 1, "unique_blocks": 3},
     {"micro_batch_tokens": 16384, "batch_tokens": 16384, "val_batch_tokens": 4096, "final_val_tokens": 4097}),
    # Parameters dominate: 6 blocks of width 384, 256-token batches.
    ("parameters", {"model_dim": 384, "num_heads": 6, "num_kv_heads": 3, "unique_blocks": 6},
     {"micro_batch_tokens": 256, "batch_tokens": 256, "val_batch_tokens": 1024, "final_val_tokens": 1025}),
])
def test_estimate_bounds_the_measured_peak_closely(tiny_corpus, tmp_path, name, model, train):
    config = {"model": {"vocab_size": 320, **model}, "train": {**TRAIN, **train}, "export": {"zstd_level": 1}}
    measured = peak_rss_bytes(config, tiny_corpus, tmp_path / name)
    estimate = trial_memory_bytes(from_dict(config))
    print(f"\n{name}: measured peak {measured / GIB:.3f} GiB, estimate {estimate / GIB:.3f} GiB")
    assert measured <= estimate <= 1.6 * measured


def test_the_default_train_settings_need_far_more_than_a_laptop_and_smoke_far_less():
    from spaces.space import load_space

    space = load_space(REPO / "spaces" / "default.yaml")
    base = from_dict(space.base)
    largest = largest_config(space, base)
    assert largest.model.model_dim == 832 and largest.model.mlp_mult == 3 and len(largest.model.schedule_order) == 19
    assert largest.model.bigram_buckets == 2048  # the knobs' largest numbers: the hashed bigram table is searched
    # micro-batches of 131,072 tokens: tens of GB per CPU trial (a 24 GB machine ran out with two of them)
    assert trial_memory_bytes(largest) > 64 * GIB
    assert trial_memory_bytes(smoke_version(largest)) < 2 * GIB
    # The bound holds for real points of the space (the estimate grows with width, depth and MLP).
    for cfg in space.sample(20, seed=1):
        assert trial_memory_bytes(smoke_version(cfg)) <= trial_memory_bytes(smoke_version(largest))


def test_trials_that_fit_take_the_tighter_of_memory_and_cpus_on_each_node():
    per_trial = 3 * GIB
    nodes = [NodeRoom("a", cpus=8, memory_bytes=10 * GIB),  # 3 by memory (0.9 x 10 / 3), 8 by CPUs
             NodeRoom("b", cpus=2, memory_bytes=100 * GIB),  # 2 by CPUs, 30 by memory
             NodeRoom("c", cpus=4, memory_bytes=2 * GIB)]  # none: one trial does not fit
    assert trials_that_fit(per_trial, 1.0, nodes) == 3 + 2 + 0
    assert trials_that_fit(per_trial, 2.0, nodes) == 3 + 1 + 0
    assert trials_that_fit(per_trial, 1.0, []) == 0
    assert trials_memory_holds(per_trial, nodes) == 3 + 30 + 0


def test_cap_sets_max_concurrent_from_this_machine_and_refuses_what_cannot_fit(tmp_path, tiny_corpus):
    import ray

    from search.tune import tuner

    space = write_space(tmp_path)
    settings = tiny_settings(tmp_path / "runs", tiny_corpus, space, "cap", max_concurrent=0)
    small = from_dict({"model": {"vocab_size": 320, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1}})
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        capped, note = tuner.cap_cpu_concurrency(settings, small)
        assert capped.max_concurrent == 2 and "2 at once" in note  # 2 CPUs; memory holds many more
        capped, note = tuner.cap_cpu_concurrency(dataclasses.replace(settings, max_concurrent=1), small)
        assert capped.max_concurrent == 1
        # An asked number above the CPUs up now stands (nodes may still join); only memory lowers it.
        capped, note = tuner.cap_cpu_concurrency(dataclasses.replace(settings, max_concurrent=3), small)
        assert capped.max_concurrent == 3 and "2 fit the CPUs up now" in note and "lowered" not in note
        huge = dataclasses.replace(small, train=dataclasses.replace(small.train, micro_batch_tokens=1 << 24,
                                                                      batch_tokens=1 << 24))
        with pytest.raises(SettingsError, match="may need up to .* GB .* --smoke"):
            tuner.cap_cpu_concurrency(settings, huge)
        gpu = dataclasses.replace(settings, gpus_per_trial=1.0)  # GPU trials are placed by GPUs, not capped here
        assert tuner.cap_cpu_concurrency(gpu, huge) == (gpu, "")
    finally:
        ray.shutdown()
    assert capacity.gib(1.5 * GIB) == "1.5 GB"
