"""What differs in Inductor's cache keys between a plain process and a Ray Tune trial (issue #6 item 2).

python benchmarks/cache_key_probe.py plain|pinned|setonly|tune OUT.json (pinned: trainer.train.pin_cpu_threads() first;
setonly: torch.set_num_threads(8) alone): compiles a small CUDA function (forward and backward)
and writes the hit/miss counters and every field of the FX-graph and AOTAutograd cache-key details except the
graph itself, so two runs can be diffed field by field.
"""
import json
import sys


def probe() -> dict:
    """Compile fwd+bwd of a tiny function on the GPU; return cache counters and the key details seen."""
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
    torch.cuda.set_device(0)
    x = torch.randn(256, 256, device="cuda")
    w = torch.randn(256, 256, device="cuda", requires_grad=True)
    torch.compile(lambda a, b: torch.relu(a @ b).square().sum())(x, w).backward()
    return {"counters": {k: dict(v) for k, v in counters.items() if "cache" in str(dict(v))},
            "threads": torch.get_num_threads(), "details": seen}


def tune_trial(config):
    from ray import tune
    tune.report({"out": json.dumps(probe())})


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "tune":
        import ray
        from ray import tune
        ray.init(address="local", include_dashboard=False)
        trainable = tune.with_resources(tune_trial, {"cpu": 8, "gpu": 1})
        result = tune.Tuner(trainable, run_config=tune.RunConfig(storage_path="/tmp/keyprobe", verbose=0)).fit()
        text = result[0].metrics["out"]
    else:
        if mode == "pinned":
            from trainer.train import pin_cpu_threads
            pin_cpu_threads()
        if mode == "setonly":
            import torch
            torch.set_num_threads(8)
        text = json.dumps(probe())
    open(out, "w").write(text)
    print(mode, json.loads(text)["counters"])
