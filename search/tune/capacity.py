"""How many CPU trials fit at once: a trial's peak memory estimated from its config, against each Ray node's memory.

On the CPU a trial's memory is mostly activations: the default train settings (micro-batches of 131,072 tokens)
need tens of GB per trial, so a plain CPU search with several trials at once ran the machine out of memory.
The estimate is a pure function of the config, fitted to peak RSS measured on the CPU (torch 2.13, float32,
2 steps + evaluation + export; tests/test_search_capacity.py measures it again): a process floor, bytes per
parameter (weights, grads, optimizer state, warm-up and checkpoint copies), and per token of the largest
micro-batch the logits plus each virtual layer's saved activations (no seq_len^2 term: PyTorch's CPU attention
is a flash kernel). GPU trials are placed by GPU count instead and are not capped here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from trainer.run_config import RunConfig
from trainer.schedule import unique_params

PROCESS_BYTES = 512 << 20  # python + torch (+ a Ray worker): 360-500 MB measured
PARAM_BYTES = 24  # fp32 weights, grads and optimizer state (19 measured), plus warm-up/checkpoint copies
LOGIT_BYTES_PER_VOCAB = 20  # per training token: logits, softcap, log-softmax and their grads (~5 floats)
EVAL_BYTES_PER_VOCAB = 9  # per evaluated token (no grads)
LAYER_FLOATS_PER_DIM, LAYER_FLOATS_PER_HIDDEN = 16, 4  # saved per token per virtual layer, 4 bytes each
EMBED_BYTES_PER_DIM = 24  # per token outside the layers (embedding, final norm)
# A config that fits the artifact limit stores at least ~4 bits per parameter once quantized and compressed, so
# no launched trial has more than 2 parameters per byte of the limit.
PARAMS_PER_LIMIT_BYTE = 2
MEMORY_USE = 0.9  # share of a node's Ray memory that trials may plan to fill (the rest: Ray's own processes)


def trial_memory_bytes(cfg: RunConfig, world_size: int = 1) -> int:
    """Estimated peak resident bytes of one CPU training process of cfg (one of world_size DDP ranks)."""
    m, t = cfg.model, cfg.train
    params = min(unique_params(m), PARAMS_PER_LIMIT_BYTE * cfg.export.limit_bytes)
    layers = len(m.schedule_order)
    tokens, _ = t.split_batch(world_size)
    per_train_token = (LOGIT_BYTES_PER_VOCAB * m.vocab_size + EMBED_BYTES_PER_DIM * m.model_dim
                       + 4 * layers * (LAYER_FLOATS_PER_DIM * m.model_dim + LAYER_FLOATS_PER_HIDDEN * m.mlp_hidden))
    per_eval_token = EVAL_BYTES_PER_VOCAB * m.vocab_size + EMBED_BYTES_PER_DIM * m.model_dim
    activations = max(tokens * per_train_token, t.val_batch_tokens * per_eval_token)
    return PROCESS_BYTES + PARAM_BYTES * params + activations


def largest_config(space, cfg: RunConfig) -> RunConfig:
    """cfg's train/export settings with the space's most memory-hungry model: widest width, largest MLP, longest
    order and most blocks, every repeat with its own MLP (an upper bound; it need not be a point of the space)."""
    orders = space.orders()
    widths = getattr(space, "widths", None) or ()
    width = max(widths, key=lambda w: w.model_dim, default=None)
    mlp = max(getattr(space, "mlp_mult", None) or (cfg.model.mlp_mult,))
    blocks = max(n for n, _ in orders)
    length = max(len(order) for _, order in orders)
    model = dataclasses.replace(
        cfg.model, unique_blocks=blocks, virtual_layers=tuple(i % blocks for i in range(length)),
        untie_mlp="full" if length > blocks else "none", mlp_mult=mlp, depth_signal="learned",
        **({"model_dim": width.model_dim, "num_heads": width.num_heads, "num_kv_heads": width.num_kv_heads}
           if width else {}))
    largest = dataclasses.replace(cfg, model=model)
    # Numeric knobs (model width, MLP ratio, embedding sizes, batch sizes) at their largest value: more is never
    # less memory for any of them.
    env = {"n": blocks, "depth": length}
    for section in ("model", "train"):
        changes = {}
        for knob in getattr(space, "knobs", ()):
            if knob.section != section:
                continue
            values = _numeric_values(knob, env)
            if values:
                changes[knob.key] = max(values + [getattr(getattr(largest, section), knob.key)])
        if changes:
            largest = dataclasses.replace(largest, **{section: dataclasses.replace(getattr(largest, section),
                                                                                   **changes)})
    return largest


def _numeric_values(knob, env: dict[str, int]) -> list:
    """A knob's possible numbers at the largest order (bools and non-numbers: none)."""
    options = [knob.value(label, env) for label in knob.labels] if knob.labels else [knob.options(env).hi]
    numbers = [v for v in options if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return numbers if len(numbers) == len(options) else []


@dataclass(frozen=True)
class NodeRoom:
    """What one Ray node offers CPU trials: its CPUs and the memory Ray schedules tasks into."""

    node_id: str
    cpus: float
    memory_bytes: float


def ray_nodes() -> list[NodeRoom]:
    """The alive Ray nodes that can run a CPU trial (they have CPUs)."""
    import ray

    rooms = []
    for node in ray.nodes():
        res = node.get("Resources", {})
        if node.get("Alive") and res.get("CPU", 0) > 0:
            rooms.append(NodeRoom(node["NodeID"], float(res["CPU"]), float(res.get("memory", 0))))
    return rooms


def _by_memory(per_trial_bytes: int, node: NodeRoom) -> int:
    return int(node.memory_bytes * MEMORY_USE // per_trial_bytes) if node.memory_bytes else 0


def trials_that_fit(per_trial_bytes: int, cpus_per_trial: float, nodes: list[NodeRoom]) -> int:
    """CPU trials that can run at once: on each node as many as both its memory and its CPUs allow."""
    return sum(min(_by_memory(per_trial_bytes, node), int(node.cpus // cpus_per_trial)) for node in nodes)


def trials_memory_holds(per_trial_bytes: int, nodes: list[NodeRoom]) -> int:
    """CPU trials the nodes' memory holds at once, whatever their CPUs (Ray's CPU scheduling bounds those)."""
    return sum(_by_memory(per_trial_bytes, node) for node in nodes)


def gib(n: float) -> str:
    return f"{n / (1 << 30):.1f} GB"
