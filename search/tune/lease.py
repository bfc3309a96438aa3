"""The device lease as search trials use it: trainer.device_lease holds the lock; a trial's key names the GPUs Ray
placed it on."""
from __future__ import annotations

import socket

from trainer.device_lease import LEASE_FOLDER, DeviceLease

__all__ = ["DeviceLease", "LEASE_FOLDER", "device_key"]


def device_key(gpu_ids: list | None = None) -> str:
    """'host/gpu0' for a trial placed on GPU 0 of this machine, 'host/cpu' for a CPU trial."""
    if gpu_ids is None:
        import ray

        gpu_ids = ray.get_gpu_ids() if ray.is_initialized() else []
    device = "gpu" + "+".join(str(g) for g in sorted(gpu_ids, key=str)) if gpu_ids else "cpu"
    return f"{socket.gethostname()}/{device}"
