"""Forward parity: does our model compute what the recurrence record's model computes, given the same weights?

Loads the record's train_gpt.py (openai/parameter-golf records/track_10min_16mb/
2026-03-31_ParallelResiduals_MiniDepthRecurrence) from a path you give, builds its GPT and ours from
benchmarks/configs/record_parity_1gpu.yaml, fills the record's model with random weights (every scalar, gate and
projection moved off its initial value, so each one counts), copies them into ours by name, and compares the two
losses and logits on the same random tokens, in float32 on the CPU, with recurrence off (11 layers) and on (13).

The one piece not compared is the bigram hash (the two hash token pairs into buckets differently by design): the
bigram table stays zero in both, as both initialize it.

The record keeps its per-layer scalars by position in the running stack (blocks[i] is the i-th layer that runs);
ours keeps them by position in the configured schedule. With recurrence off the copy maps the record's i-th running
layer to our layer at that depth, so both run the same numbers; the switch itself is where the two differ (see
BENCHMARKS.md, "Does our trainer match the recurrence record per token").

Usage: python benchmarks/forward_parity.py --reference path/to/train_gpt.py [--seq-len 256] [--out parity.json]
Exit 0 when every compared loss agrees within --tolerance, 1 when one does not, 2 on bad input.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.model import GPT  # noqa: E402
from trainer.run_config import load  # noqa: E402

CONFIG = REPO / "benchmarks" / "configs" / "record_parity_1gpu.yaml"


def load_reference(path: Path):
    """Import the record script as a module (its main() does not run)."""
    spec = importlib.util.spec_from_file_location("record_train_gpt", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_model(ref, cfg):
    """The record's GPT with the record's published settings (ours: the same numbers, read from our config)."""
    m = cfg.model
    return ref.GPT(
        vocab_size=m.vocab_size, num_layers=m.unique_blocks, model_dim=m.model_dim, num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads, mlp_mult=m.mlp_mult, tie_embeddings=True,
        tied_embed_init_std=m.tied_embed_init_std,
        logit_softcap=m.logit_softcap, rope_base=10000.0, qk_gain_init=m.qk_gain_init,
        bigram_vocab_size=m.bigram_buckets, bigram_dim=m.bigram_dim, xsa_last_n=m.xsa_last, rope_dims=m.rope_dims,
        ln_scale=m.ln_scale, ve_enabled=True, ve_dim=m.value_embed_dim,
        ve_layers=",".join(str(i) for i in m.value_embed_layers), parallel_residual=True,
        parallel_start_layer=m.parallel_from_block, disable_layer0_attn=True, recur_layers=[4, 5],
        recurrence_active=False, repeat_untie_mlp="full", repeat_untie_mlp_layers=[4, 5],
    )


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its initial value: matrices to small Gaussians, scalars to their value plus noise."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.startswith("bigram.embed"):
            continue  # the hashes differ; both tables stay zero
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim >= 2 and min(p.shape[-2:]) >= 64:
            p.copy_(noise * 0.04)
        else:
            p.add_(noise * 0.1)


def copy_weights(ref_model, ours: GPT, recurrence_on: bool) -> None:
    """Write the record model's weights into ours under our names (see the module docstring for the scalars)."""
    n = ours.cfg.unique_blocks
    sd = {k: v.detach().float() for k, v in ref_model.state_dict().items()}
    mine = dict(ours.named_parameters())

    def put(name, value):
        mine[name].data.copy_(value.reshape(mine[name].shape))

    put("tok_emb.weight", sd["tok_emb.weight"])
    put("bigram.table.weight", sd["bigram.embed.weight"])
    put("bigram.proj.weight", sd["bigram.proj.weight"])
    put("bigram.scale", sd["bigram.scale"])
    put("smear_gate", sd["smear.gate"])
    put("skip_weights", sd["skip_weights"])
    put("skip_gates", sd["skip_gates"])
    put("value_embed.table.weight", sd["ve_shared.embed.weight"])
    put("value_embed.proj.weight", sd["ve_shared.proj.weight"])
    put("value_embed.scales", sd["ve_shared.scale"] * torch.cat([sd[f"ve_layer_scales.{k}"] for k in range(2)]))
    for b in range(n):
        if f"attns.{b}.c_q.weight" in mine:
            put(f"attns.{b}.c_q.weight", sd["qo_bank"][b])
            put(f"attns.{b}.proj.weight", sd["qo_bank"][n + b])
            put(f"attns.{b}.c_k.weight", sd["kv_bank"][b])
            put(f"attns.{b}.c_v.weight", sd["kv_bank"][n + b])
        put(f"mlps.{b}.fc.weight", sd["mlp_up_bank"][b])
        put(f"mlps.{b}.proj.weight", sd["mlp_down_bank"][b])
    for k in range(2):  # the record's repeat_mlp.k is the MLP of the k-th repeat (positions 6, 7)
        put(f"mlps.{n + k}.fc.weight", sd[f"repeat_mlp.{k}.fc.weight"])
        put(f"mlps.{n + k}.proj.weight", sd[f"repeat_mlp.{k}.proj.weight"])
    ours.set_recurrence(recurrence_on)
    for depth, step in enumerate(ours.steps):  # the record's blocks[depth] holds this running layer's scalars
        block, physical = f"blocks.{depth}", step.block
        prefix = f"layers.{step.position}"
        for ref_name, our_name in (("attn_scale", "attn_scale"), ("mlp_scale", "mlp_scale"),
                                   ("resid_mix", "resid_mix"), ("attn.q_gain", "q_gain")):
            if f"{prefix}.{our_name}" in mine:
                put(f"{prefix}.{our_name}", sd[f"{block}.{ref_name}"])
        if f"{prefix}.lane_post" in mine:
            put(f"{prefix}.lane_post", sd["parallel_post_lambdas"][physical])
            put(f"{prefix}.lane_resid", sd["parallel_resid_lambdas"][physical])


def compare(ref_model, ours: GPT, tokens: torch.Tensor, recurrence_on: bool) -> dict:
    """Both models' losses and the largest logit difference on the same tokens."""
    ref_model.set_recurrence_active(recurrence_on)
    ref_model.eval()
    ours.eval()
    x, y = tokens[:, :-1], tokens[:, 1:]
    with torch.no_grad():
        ref_loss = float(ref_model(x, y))
        our_loss = float(ours(x, y))
        logit_diff = float((ref_model.forward_logits(x).float() - ours.logits(x)).abs().max())
    return {"recurrence": "on" if recurrence_on else "off", "layers": len(ours.steps), "reference_loss": ref_loss,
            "our_loss": our_loss, "loss_diff": our_loss - ref_loss, "max_logit_diff": logit_diff}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="the record's train_gpt.py")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (at most 1024: the record "
                        "rescales its rotary base beyond its 1024-token training length)")
    parser.add_argument("--batch", type=int, default=2, help="sequences")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and tokens")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest loss difference called a match")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON here too")
    args = parser.parse_args(argv)
    if not args.reference.is_file():
        print(f"forward_parity: --reference {args.reference} is not a file: give the record's train_gpt.py",
              file=sys.stderr)
        return 2
    if not 2 <= args.seq_len <= 1024:
        print(f"forward_parity: --seq-len {args.seq_len}: use 2..1024", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    cfg = load(CONFIG, ["model.rope_base=10000.0"])
    ref = load_reference(args.reference)
    ref_model = reference_model(ref, cfg).float()
    randomize(ref_model, args.seed)
    ours = GPT(cfg.model)
    tokens = torch.randint(0, cfg.model.vocab_size, (args.batch, args.seq_len + 1),
                           generator=torch.Generator().manual_seed(args.seed + 1))
    rows = []
    for recurrence_on in (False, True):
        copy_weights(ref_model, ours, recurrence_on)
        rows.append(compare(ref_model, ours, tokens, recurrence_on))
    for row in rows:
        print(f"recurrence {row['recurrence']:>3} ({row['layers']} layers): record {row['reference_loss']:.6f}  ours "
              f"{row['our_loss']:.6f}  diff {row['loss_diff']:+.2e}  max |logit diff| {row['max_logit_diff']:.2e}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(abs(r["loss_diff"]) <= args.tolerance for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
