"""The training run: budgeted training with optional rung reports, full evaluation, export and round trip.

One code path serves the CLI, search trials (with a `report` callback) and full-scale reruns (torchrun).
"""
from __future__ import annotations

import copy
import gc
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer import artifact
from trainer.bpb import byte_table, load_sentencepiece
from trainer.run_config import RunConfig
from trainer.data.shards import DistributedBatches, TokenStream, load_val_tokens
from trainer.evaluate import EvalResult, evaluate
from trainer.flops import flops_per_token, mfu
from trainer.model import GPT
from trainer.optim import build_optimizers, cooldown_scales, lr_scale, set_schedule
from trainer.schedule import unique_params

Report = Callable[[dict, Callable[[Path], None]], None]
STATE_FILE = "trainer_state.rank{rank}.pt"
WEIGHTS_FILE = "weights.pt"  # the trained float weights, kept so `trainer export` can try other export settings


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class StopRequested(RuntimeError):
    """The caller's should_stop() said stop (e.g. ASHA stopped the trial): the run ends without exporting."""


@dataclass(frozen=True)
class Runtime:
    """Where this process runs: device and its place in a distributed group."""

    device: torch.device
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


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
    (OMP_NUM_THREADS) and torchrun leaves at the core count (call 32: an 8-thread Tune trial missed what a
    16-thread process had compiled, an 8-thread process then hit). On torch 2.11 the key also holds AOTAutograd's decomposition
    table, which differs between a Tune trial and a plain process (call 35), so reruns after a search still
    compile each shape once. A GPU run does little CPU math.
    """
    torch.set_num_threads(min(8, os.cpu_count() or 1))


class PhaseTimer:
    """Seconds per named phase, each measured from the end of the one before (or from the start)."""

    def __init__(self, start: float):
        self.last, self.phases_s = start, {}

    def done(self, name: str) -> None:
        """Close the phase `name` now."""
        now = time.perf_counter()
        self.phases_s[name] = now - self.last
        self.last = now

    def total_s(self) -> float:
        """Seconds of all phases closed so far."""
        return sum(self.phases_s.values())

    def line(self, title: str) -> str:
        """'title 9.1 s: a 0.4, b 0.1, ...' for the log."""
        parts = ", ".join(f"{name} {s:.2f}" for name, s in self.phases_s.items())
        return f"{title} {self.total_s():.2f} s: {parts}"


class RunLog:
    """Progress lines to the terminal and to out_dir/train.log (main rank only)."""

    def __init__(self, path: Path, enabled: bool, echo: bool = True):
        self.path, self.enabled, self.echo = path, enabled, echo
        self.start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.perf_counter() - self.start:8.1f}s] {message}"
        if self.echo:
            print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether exc says the GPU is full: the caching allocator's error, or the driver's (a kernel launch)."""
    # A compiled kernel's launch that finds no memory raises a plain RuntimeError from the driver; the
    # allocator's cap (set_per_process_memory_fraction) does not cover the driver's own allocations.
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "CUDA driver error: out of memory" in str(exc))


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training loss is {loss} at step {step}; lower the learning rates or check the config")


def build_model(cfg: RunConfig, device: torch.device) -> GPT:
    """The config's model on device, in the dtypes training and evaluation use there (bf16 blocks on the GPU)."""
    on_gpu = device.type == "cuda"
    compute_dtype = torch.bfloat16 if on_gpu else torch.float32
    residual_dtype = getattr(torch, cfg.train.residual_dtype) if on_gpu else torch.float32
    return GPT(cfg.model, cfg.train.attention, compute_dtype, residual_dtype).to(device)


def train(
    cfg: RunConfig,
    data_dir: Path,
    tokenizer_path: Path,
    out_dir: Path,
    report: Report | None = None,
    resume_from: Path | None = None,
    device: str | None = None,
    echo: bool = True,
    should_stop: Callable[[], bool] | None = None,
    before_training: Callable[[], None] | None = None,
    save_weights: bool = False,
) -> dict:
    """Train within cfg.train.budget_s, evaluate, export the artifact; return (and write) the metrics.

    before_training runs once the model is compiled and warm, just before the timed training: a search trial
    that shares its GPU waits there for it (search.tune.lease); its seconds are reported as wait_s.
    save_weights writes the trained float weights to out_dir/weights.pt (rank 0), for `trainer export`.
    """
    wall_start = time.perf_counter()
    # Start-up (entry to compilation) is pure overhead for a search trial; time its phases to see what to cut.
    startup = PhaseTimer(wall_start)
    rt = setup_runtime(device)
    tc = cfg.train
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = RunLog(out_dir / "train.log", rt.is_main, echo)
    log(f"config {json.dumps(cfg.to_dict(), sort_keys=True)}")
    startup.done("runtime")

    sp = load_sentencepiece(tokenizer_path)
    if sp.vocab_size() > cfg.model.vocab_size:
        raise ValueError(
            f"tokenizer has {sp.vocab_size()} pieces but model.vocab_size={cfg.model.vocab_size}; raise vocab_size"
        )
    table = byte_table(sp, cfg.model.vocab_size)
    startup.done("tokenizer")
    val_tokens = load_val_tokens(data_dir, cfg.model.vocab_size, tc.final_val_tokens or None)
    val_prefix = val_tokens[: tc.val_prefix_tokens + 1]
    local_tokens, grad_accum = tc.split_batch(rt.world_size)
    startup.done("val")

    torch.manual_seed(tc.seed)
    on_gpu = rt.device.type == "cuda"
    model = build_model(cfg, rt.device)
    _sync(rt.device)  # charge the weights' copy to the model phase, not to the next one
    startup.done("model")
    optimizers = build_optimizers(model, tc)
    startup.done("optimizers")
    compiled, evaluator = model, model
    if tc.compile and on_gpu and tc.compile_scope == "layers":
        model.compile_layers(for_eval=tc.compile_eval)
    elif tc.compile and on_gpu:
        compiled = torch.compile(model, dynamic=False)
        # Evaluation is forward-only over a few batches: compiling its graph cost ~27 s of a 180 s H100 run.
        evaluator = compiled if tc.compile_eval else model
    net = (
        DistributedDataParallel(compiled, device_ids=[rt.device.index] if on_gpu else None, broadcast_buffers=False)
        if rt.world_size > 1
        else compiled
    )
    startup.done("compile_wrap")
    stream = TokenStream(data_dir, cfg.model.vocab_size)
    batches = DistributedBatches(stream, rt.rank, rt.world_size, rt.device)
    startup.done("data")
    log(
        f"unique_params {unique_params(cfg.model):,} virtual_layers {len(model.schedule)} "
        f"grad_accum {grad_accum} world {rt.world_size} device {rt.device} attention {model.attention_kernel} "
        f"compile {tc.compile_scope if tc.compile and on_gpu else 'off'}"
    )
    log(startup.line("startup"))

    def train_step(step: int, train_s: float, lr_scale_now: float | None = None) -> torch.Tensor:
        set_schedule(optimizers, tc, step, train_s, lr_scale_now)
        total = torch.zeros((), device=rt.device)
        for micro in range(grad_accum):
            x, y = batches.next(local_tokens, tc.seq_len)
            if rt.world_size > 1:
                net.require_backward_grad_sync = micro == grad_accum - 1
            loss = net(x, y)
            (loss / grad_accum).backward()
            total += loss.detach()
        if tc.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip_norm)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        return total / grad_accum

    def snapshot() -> tuple:
        """Copies of the weights and the optimizers' state, and the data position: what `rewind` goes back to."""
        return (copy.deepcopy(model.state_dict()), [copy.deepcopy(o.state_dict()) for o in optimizers],
                stream.state())

    def rewind(saved: tuple) -> None:
        """Back to a snapshot, as if the steps taken since had never run."""
        model.load_state_dict(saved[0])
        for opt, state in zip(optimizers, saved[1]):
            opt.load_state_dict(state)
        stream.restore(saved[2])

    def warm_up(initial: tuple) -> None:
        """Compile and warm the kernels on real steps, then rewind to `initial`: warm-up never counts as training."""
        for _ in range(tc.compile_warmup_steps):
            train_step(0, 0.0)
        if report is not None and tc.compile_eval:
            evaluate(evaluator, val_prefix, table, tc.seq_len, tc.val_batch_tokens, rt.device, rt.rank, rt.world_size)
        rewind(initial)
        _sync(rt.device)

    def take_turn() -> float:
        """Run before_training (a trial sharing its GPU waits there for it); return the seconds it took."""
        if before_training is None:
            return 0.0
        asked_s = time.perf_counter()
        before_training()
        waited_s = time.perf_counter() - asked_s
        log(f"waited {waited_s:.1f}s for the device")
        return waited_s

    compile_start = time.perf_counter()
    wait_s = None
    if tc.compile_warmup_steps > 0:
        initial = snapshot()  # the data stream has not moved yet: it rewinds to its start
        out_of_memory = False
        try:
            warm_up(initial)
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if before_training is None or not is_out_of_memory(exc):
                raise
            out_of_memory = True  # retried below, once the exception and the activations its frames hold are gone
        if out_of_memory:
            # Beside the trial that holds the GPU, this one's warm-up did not fit: take the turn, then warm up
            # (the graphs are compiled already; only the steps run again).
            log("warm-up ran out of GPU memory beside another trial; warming up again once it holds the device")
            model.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            wait_s = take_turn()
            warm_up(initial)
    compile_s = time.perf_counter() - compile_start - (wait_s or 0.0)
    if wait_s is None:
        wait_s = take_turn()

    step, train_s, train_tokens = 0, 0.0, 0
    if resume_from is not None:
        state_path = Path(resume_from) / STATE_FILE.format(rank=rt.rank)
        if not state_path.is_file():
            state_path = Path(resume_from) / STATE_FILE.format(rank=0)
        state = torch.load(state_path, map_location=rt.device, weights_only=True)
        model.load_state_dict(state["model"])
        for opt, opt_state in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        step, train_s, train_tokens = state["step"], state["train_s"], state["train_tokens"]
        stream.restore(state["stream"])
        log(f"resumed from {resume_from} at step {step}, train_s {train_s:.1f}")

    def save_checkpoint(path: Path) -> None:
        """Write this rank's full training state (model, optimizers, counters, data position)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        state = {
            "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in optimizers],
            "step": step,
            "train_s": train_s,
            "train_tokens": train_tokens,
            "stream": stream.state(),
        }
        torch.save(state, Path(path) / STATE_FILE.format(rank=rt.rank))

    def score_prefix() -> tuple[EvalResult, EvalResult]:
        """The val prefix's scores before and after the artifact's quantization round trip (the same one
        without train.rung_roundtrip)."""
        pre = evaluate(evaluator, val_prefix, table, tc.seq_len, tc.val_batch_tokens, rt.device, rt.rank, rt.world_size)
        _check_finite(pre.val_loss, step)
        if not tc.rung_roundtrip:
            return pre, pre
        trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(artifact.unpack(artifact.pack(trained, cfg))[1])
        post = evaluate(evaluator, val_prefix, table, tc.seq_len, tc.val_batch_tokens, rt.device, rt.rank,
                        rt.world_size)
        model.load_state_dict(trained)  # training goes on from the unquantized weights
        return pre, post

    def score_after_cooldown() -> tuple[EvalResult, EvalResult, int]:
        """score_prefix after a cooldown of train.rung_cooldown_fraction of the steps so far, and its step count;
        the weights, optimizer state and data position are rewound after, so training goes on as without it."""
        saved = snapshot()
        steps = max(1, round(tc.rung_cooldown_fraction * step))
        for i, scale in enumerate(cooldown_scales(lr_scale(tc, step, train_s), steps)):
            train_step(step + i, train_s, scale)
        pre, post = score_prefix()
        rewind(saved)
        return pre, post, steps

    eval_s = 0.0
    next_report_s = tc.next_report_s(train_s)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(rt.device)
    _sync(rt.device)
    t0 = time.perf_counter()
    while True:
        loss = train_step(step, train_s + time.perf_counter() - t0)
        step += 1
        train_tokens += tc.batch_tokens
        now_s = train_s + time.perf_counter() - t0
        stop = step >= tc.max_steps or now_s >= tc.budget_s
        if should_stop is not None and should_stop():  # checked every step, so a stopped trial ends at once
            raise StopRequested(f"stopped by the caller at step {step}")
        if rt.world_size > 1:  # every rank must stop on the same step
            flag = torch.tensor(int(stop), device=rt.device)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            stop = bool(flag.item())
        if step == 1 or step % tc.log_every_steps == 0 or stop:
            value = loss.item()
            _check_finite(value, step)
            log(f"step {step} loss {value:.4f} train_s {now_s:.1f} step_ms {1000 * now_s / step:.1f} "
                f"tokens_per_s {train_tokens / max(now_s, 1e-9):,.0f}")
        if report is not None and next_report_s is not None and now_s >= next_report_s and not stop:
            _sync(rt.device)
            train_s += time.perf_counter() - t0
            eval_start = time.perf_counter()
            pre, post = score_prefix()
            rung = {"step": step, "train_s": train_s, "train_tokens": train_tokens, "val_bpb": post.val_bpb,
                    "val_loss": post.val_loss, "val_bpb_prequant": pre.val_bpb, "val_loss_prequant": pre.val_loss,
                    # so a trial that ASHA stops still tells where its time before training went
                    "startup_s": startup.total_s(), "compile_s": compile_s, "wait_s": wait_s}
            if tc.rung_cooldown_fraction > 0:
                # ASHA ranks the cooled-down score; the one before stays in the report, so the search's fidelity
                # table can say which of the two ranked the trials as their finals did.
                pre, post, cooldown_steps = score_after_cooldown()
                rung.update(val_bpb_before_cooldown=rung["val_bpb"], val_bpb=post.val_bpb, val_loss=post.val_loss,
                            val_bpb_prequant=pre.val_bpb, val_loss_prequant=pre.val_loss,
                            cooldown_steps=cooldown_steps)
                log(f"rung at step {step}: val_bpb {rung['val_bpb_before_cooldown']:.4f} before, "
                    f"{post.val_bpb:.4f} after a {cooldown_steps}-step cooldown")
            eval_s += time.perf_counter() - eval_start
            report(rung, save_checkpoint)
            next_report_s = tc.next_report_s(train_s)  # one report however many scheduled times were crossed
            t0 = time.perf_counter()
        if stop:
            break
    _sync(rt.device)
    train_s += time.perf_counter() - t0
    peak_mem_bytes = torch.cuda.max_memory_allocated(rt.device) if on_gpu else 0
    tokens_per_s = train_tokens / max(train_s, 1e-9)
    train_mfu = mfu(cfg.model, tc.seq_len, tokens_per_s, rt.world_size)
    log(f"training done: {step} steps, {train_s:.1f}s, {1000 * train_s / max(step, 1):.1f} ms/step, "
        f"{tokens_per_s:,.0f} tokens/s, MFU {100 * train_mfu:.1f}%, peak_mem {peak_mem_bytes / 2**30:.2f} GiB")

    if save_weights and rt.is_main:
        torch.save(model.state_dict(), out_dir / WEIGHTS_FILE)

    eval_start = time.perf_counter()
    pre = evaluate(evaluator, val_tokens, table, tc.seq_len, tc.val_batch_tokens, rt.device, rt.rank, rt.world_size)
    eval_s += time.perf_counter() - eval_start
    log(f"val_bpb_prequant {pre.val_bpb:.4f} val_loss {pre.val_loss:.4f} over {pre.tokens:,} tokens / {pre.bytes:,} bytes")

    # Every rank quantizes the same weights to the same payload. Rank 0 compresses it to the artifact in a
    # thread while the round-trip evaluation runs on the weights decoded from that payload; the file is then
    # checked to decompress to exactly it, so the reported val_bpb is the artifact's (zstd-22: 3-25 s).
    export_start = time.perf_counter()
    artifact_path = out_dir / "model.ptz"
    payload = artifact.pack(model.state_dict(), cfg)
    with ThreadPoolExecutor(max_workers=1) as pool:
        written = pool.submit(artifact.write, payload, cfg, artifact_path) if rt.is_main else None
        _, restored = artifact.unpack(payload)
        model.load_state_dict(restored)
        export_s = time.perf_counter() - export_start
        eval_start = time.perf_counter()
        post = evaluate(evaluator, val_tokens, table, tc.seq_len, tc.val_batch_tokens, rt.device, rt.rank, rt.world_size)
        eval_s += time.perf_counter() - eval_start
        wait_start = time.perf_counter()
        info = written.result() if written is not None else None
    if rt.is_main and not artifact.holds(artifact_path, payload):
        raise artifact.ArtifactError(f"{artifact_path} does not decompress to the payload that was evaluated")
    if rt.world_size > 1:  # other ranks learn the compressed size from rank 0 (no shared filesystem needed)
        model_bytes = torch.tensor([info.model_bytes if info is not None else 0], device=rt.device)
        dist.broadcast(model_bytes, src=0)
        info = artifact.ArtifactInfo(int(model_bytes.item()), len(payload), artifact.code_bytes())
    export_s += time.perf_counter() - wait_start

    metrics = {
        "val_bpb": post.val_bpb,
        "val_loss": post.val_loss,
        "val_bpb_prequant": pre.val_bpb,
        "val_loss_prequant": pre.val_loss,
        "val_tokens": post.tokens,
        "val_bytes": post.bytes,
        "artifact_bytes": info.artifact_bytes,
        "model_bytes": info.model_bytes,
        "code_bytes": info.code_bytes,
        "payload_bytes": info.payload_bytes,
        "limit_bytes": cfg.export.limit_bytes,
        "over_limit": not artifact.within_limit(info, cfg.export),
        "unique_params": unique_params(cfg.model),
        "virtual_layers": len(model.schedule),
        "steps": step,
        "train_tokens": train_tokens,
        "train_s": train_s,
        "step_ms": 1000 * train_s / max(step, 1),
        "tokens_per_s": tokens_per_s,
        "flops_per_token": flops_per_token(cfg.model, tc.seq_len),
        "mfu": train_mfu,
        "peak_mem_bytes": peak_mem_bytes,
        "startup_s": startup.total_s(),
        "compile_s": compile_s,
        "wait_s": wait_s,
        "eval_s": eval_s,
        "export_s": export_s,
        "wall_s": time.perf_counter() - wall_start,
        "world_size": rt.world_size,
        "attention": model.attention_kernel,
        "device": torch.cuda.get_device_name(rt.device) if on_gpu else "cpu",
        "config": cfg.to_dict(),
    }
    log(f"val_bpb {post.val_bpb:.4f} (round trip) artifact_bytes {info.artifact_bytes:,} "
        f"(model {info.model_bytes:,} + code {info.code_bytes:,}) limit {cfg.export.limit_bytes:,}")
    if rt.is_main:
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return metrics
