"""Profile a few eager training steps of a config on the GPU: top CUDA kernels and the attention backend.

    python benchmarks/profile_step.py [SECTION.KEY=VALUE ...]   # overrides of the trainer's defaults
"""
import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from trainer import run_config as config
from trainer.model import GPT
from trainer.optim import build_optimizers

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="e.g. model.unique_blocks=11")
cfg = config.load(None, parser.parse_args().overrides)
model = GPT(cfg.model, compute_dtype=torch.bfloat16).cuda()
opts = build_optimizers(model, cfg.train)
seqs = cfg.train.micro_batch_tokens // cfg.train.seq_len
x = torch.randint(0, cfg.model.vocab_size, (seqs, cfg.train.seq_len), device="cuda")


def step(accum=8):
    for _ in range(accum):
        (model(x, x) / accum).backward()
    for o in opts:
        o.step()
    model.zero_grad(set_to_none=True)


for _ in range(3):
    step()
torch.cuda.synchronize()
start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
start.record()
for _ in range(3):
    step()
end.record()
torch.cuda.synchronize()
print(f"eager step_ms {start.elapsed_time(end) / 3:.1f}")
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
