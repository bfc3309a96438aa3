"""Where this process runs: its device, its place in a distributed group, and the CPU threads it uses."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device and its place in a distributed group."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    def synchronize(self) -> None:
        """Wait for the device's queued work, so a clock read after it measures that work."""
        if self.on_gpu:
            torch.cuda.synchronize(self.device)


def default_device(device: str | None = None) -> torch.device:
    """The named device, else the GPU where there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def setup_runtime(device: str | None) -> Runtime:
    """Join the process group started by torchrun or Ray Train, or run alone."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if torch.cuda.is_available() and device != "cpu" else "gloo"
        dist.init_process_group(backend=backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    if device is None:
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
            device = f"cuda:{local_rank}"
        else:
            device = "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        pin_cpu_threads()
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device=dev, rank=rank, world_size=world)


def pin_cpu_threads() -> None:
    """Give this GPU run the CPU thread count every GPU run on a node uses, whoever launched it (Ray, torchrun).

    Inductor's compiled-graph cache key includes torch.get_num_threads(), which Ray sets to a trial's CPUs
    (OMP_NUM_THREADS) and torchrun leaves at the core count: on an H100, an 8-thread Tune trial missed what a
    16-thread process had compiled, and an 8-thread process then hit it. On torch 2.11 the key also holds
    AOTAutograd's decomposition table, which differs between a Tune trial and a plain process, so reruns after a
    search still compile each shape once (BENCHMARKS.md, "Compile time and
    scope"). A GPU run does little CPU math.
    """
    torch.set_num_threads(min(8, os.cpu_count() or 1))
