"""Time each causal attention kernel the trainer can pick (train.attention) at one shape, forward and backward.

Every kernel is first checked against plain SDPA on the same inputs (outputs and input gradients); one that
disagrees or fails is reported, not timed. Prints a Markdown table and writes it as JSON (--out).

    python benchmarks/attention_kernels.py --batch 16 --seq-len 2048 --heads 8 --kv-heads 4 --head-dim 64
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from trainer.attention import ATTENTION_CHOICES, pick_attention, sdpa_attention

# bf16 kernels accumulate in float32 but round inputs and outputs: this is the agreement they reach.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def inputs(batch: int, seq_len: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
           device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """q (B, H, T, D) and k, v (B, Hkv, T, D), requiring gradients."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    shapes = ((batch, heads, seq_len, head_dim), (batch, kv_heads, seq_len, head_dim),
              (batch, kv_heads, seq_len, head_dim))
    return tuple(torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for s in shapes)


def forward_backward(kernel, q, k, v, grad_out):
    """The kernel's output and the gradients of q, k, v for grad_out."""
    for t in (q, k, v):
        t.grad = None
    out = kernel(q, k, v)
    out.backward(grad_out)
    return out.detach(), q.grad.detach(), k.grad.detach(), v.grad.detach()


def max_error(got: tuple[torch.Tensor, ...], want: tuple[torch.Tensor, ...]) -> float:
    """Largest |got - want| over output and gradients, relative to each tensor's largest |want|."""
    return max(((g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-12)).item()
               for g, w in zip(got, want))


def time_ms(kernel, q, k, v, grad_out, repeats: int) -> float:
    """Mean milliseconds of one forward + backward (after two untimed calls)."""
    for _ in range(2):
        forward_backward(kernel, q, k, v, grad_out)
    sync = torch.cuda.synchronize if q.is_cuda else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        forward_backward(kernel, q, k, v, grad_out)
    sync()
    return 1000 * (time.perf_counter() - start) / repeats


def measure(args: argparse.Namespace) -> list[dict]:
    """One row per kernel choice: what it resolved to, its error against SDPA, its time (or why none)."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    q, k, v = inputs(args.batch, args.seq_len, args.heads, args.kv_heads, args.head_dim, dtype, device)
    grad_out = torch.randn_like(q.detach())
    want = forward_backward(sdpa_attention, q, k, v, grad_out)
    # causal attention costs half the square: 2 matmuls forward, 5 backward, 2 flops per multiply-add
    flops = 7 * 2 * args.batch * args.heads * args.seq_len * args.seq_len * args.head_dim / 2
    rows = []
    for choice in args.kernels:
        row = {"choice": choice}
        try:
            row["kernel"], kernel = pick_attention(choice)
            row["max_rel_error"] = max_error(forward_backward(kernel, q, k, v, grad_out), want)
        except Exception as exc:  # a kernel that cannot run here is a row of the table, not a crash
            rows.append({**row, "note": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
            continue
        if row["max_rel_error"] > TOLERANCE[dtype]:
            rows.append({**row, "note": f"disagrees with SDPA beyond {TOLERANCE[dtype]}: not timed"})
            continue
        row["ms"] = time_ms(kernel, q, k, v, grad_out, args.repeats)
        row["tflops"] = flops / row["ms"] / 1e9
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """The rows as Markdown."""
    lines = ["| train.attention | kernel | fwd+bwd ms | TFLOP/s | max rel. error vs SDPA | note |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        ms = f"{r['ms']:.3f}" if "ms" in r else ""
        tflops = f"{r['tflops']:.1f}" if "tflops" in r else ""
        err = f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else ""
        lines.append(f"| {r['choice']} | {r.get('kernel', '')} | {ms} | {tflops} | {err} | {r.get('note', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the shape, measure every kernel, print the table, write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--kernels", nargs="+", default=list(ATTENTION_CHOICES), choices=ATTENTION_CHOICES,
                   help="train.attention values to measure (default: all)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", type=Path, help="JSON file for the shape and the rows")
    args = p.parse_args(argv)
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} is not a multiple of --kv-heads {args.kv_heads}")
    rows = measure(args)
    print(table(rows))
    if args.out:
        shape = {k: getattr(args, k) for k in ("batch", "seq_len", "heads", "kv_heads", "head_dim", "dtype", "device")}
        device = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
        args.out.write_text(json.dumps({"shape": shape, "device": device, "torch": torch.__version__,
                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
