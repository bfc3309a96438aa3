"""What differs in Inductor's cache keys between a plain process and a Ray Tune trial.

python benchmarks/cache_key_probe.py plain|pinned|setonly|tune OUT.json [cuda|cpu] (pinned:
trainer.runtime.pin_cpu_threads() first; setonly: torch.set_num_threads(8) alone): compiles a small function
(forward and backward) on the device and writes the hit/miss counters and every field of the FX-graph and
AOTAutograd cache-key details except the graph itself, so two runs can be diffed field by field
(benchmarks/cache_key_diff.py). On the CPU run both with OMP_NUM_THREADS=1, the thread count of a 1-CPU Tune
trial, which the CPU key includes; a second run then shows whether it hit the first one's entries.
"""
import json
import sys


def probe(device: str = "cuda") -> dict:
    """Compile fwd+bwd of a tiny function on the device; return cache counters and the key details seen."""
    import torch
    from torch._dynamo.utils import counters
    from torch._functorch._aot_autograd import autograd_cache
    from torch._inductor import codecache

    seen = []

    def record(cls):
        original = cls.__init__

        def init(self, *args, **kwargs):
            original(self, *args, **kwargs)
            seen.append({"kind": cls.__name__, **{k: repr(v)[:400000] for k, v in vars(self).items()
                                                   if k not in ("gm", "example_inputs", "fx_kwargs")}})
        cls.__init__ = init

    record(codecache.FxGraphHashDetails)
    record(autograd_cache.AOTAutogradCacheDetails)
    if device == "cuda":
        torch.cuda.set_device(0)
    x = torch.randn(256, 256, device=device)
    w = torch.randn(256, 256, device=device, requires_grad=True)
    torch.compile(lambda a, b: torch.relu(a @ b).square().sum())(x, w).backward()
    return {"counters": {k: dict(v) for k, v in counters.items() if "cache" in str(dict(v))},
            "threads": torch.get_num_threads(), "details": seen}


def tune_trial(config):
    from ray import tune
    tune.report({"out": json.dumps(probe(config["device"]))})


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4) or sys.argv[1] not in ("plain", "pinned", "setonly", "tune"):
        print(__doc__.strip())
        sys.exit(0 if sys.argv[1:2] in (["-h"], ["--help"]) else 2)
    mode, out = sys.argv[1], sys.argv[2]
    device = sys.argv[3] if len(sys.argv) > 3 else "cuda"
    if mode == "tune":
        import ray
        from ray import tune
        ray.init(address="local", include_dashboard=False)
        resources = {"cpu": 8, "gpu": 1} if device == "cuda" else {"cpu": 1}
        trainable = tune.with_resources(tune_trial, resources)
        result = tune.Tuner(trainable, param_space={"device": device},
                            run_config=tune.RunConfig(storage_path="/tmp/keyprobe", verbose=0)).fit()
        text = result[0].metrics["out"]
    else:
        if mode == "pinned":
            from trainer.runtime import pin_cpu_threads
            pin_cpu_threads()
        if mode == "setonly":
            import torch
            torch.set_num_threads(8)
        text = json.dumps(probe(device))
    open(out, "w").write(text)
    print(mode, json.loads(text)["counters"])
