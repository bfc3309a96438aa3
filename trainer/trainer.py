"""The Trainer: one training run as named steps, in the order `trainer.train.train` takes them.

    build (__init__) -> warm_up_and_wait -> [resume] -> fit -> export -> write_metrics

The trainer knows nothing of its caller: reports, early stops and waiting for a device come through Hooks
(trainer.hooks); techniques that act at fixed points of training are Components (trainer.components).
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import json
import math
import pickle
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainer import artifact
from trainer.bpb import ByteTable, byte_table, load_sentencepiece
from trainer.components import build_components
from trainer.data.sampler import ShuffledWindows
from trainer.data.shards import DistributedBatches, TokenStream, load_val_tokens
from trainer.evaluate import EvalResult, evaluate
from trainer.export_pipeline import BackgroundWrite, check_export, export_payload
from trainer.flops import H100_BF16_DENSE_FLOPS, flops_per_token
from trainer.hooks import Hooks, NoHooks, StepLog, StopRequested
from trainer.metrics import METRICS_FILE, RunMetrics
from trainer.model import GPT
from trainer.optim import build_optimizers, lr_scale, set_schedule
from trainer.run_config import RunConfig
from trainer.runlog import PhaseTimer, RunLog
from trainer.runtime import setup_runtime
from trainer.schedule import unique_params

STATE_FILE = "trainer_state.rank{rank}.pt"


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def check_finite(loss: float, step: int) -> None:
    """Raise TrainingDiverged if loss is NaN or infinite."""
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training loss is {loss} at step {step}; lower the learning rates or check the config")


def build_model(cfg: RunConfig, device: torch.device) -> GPT:
    """The config's model on device, in the dtypes training and evaluation use there (bf16 blocks on the GPU)."""
    on_gpu = device.type == "cuda"
    compute_dtype = torch.bfloat16 if on_gpu else torch.float32
    residual_dtype = getattr(torch, cfg.train.residual_dtype) if on_gpu else torch.float32
    return GPT(cfg.model, cfg.train.attention, compute_dtype, residual_dtype).to(device)


def load_weights(cfg: RunConfig, path: Path, device: torch.device) -> GPT:
    """The config's model holding the float weights a run saved (weights.pt); a file torch cannot read is named."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise ValueError(f"{path}: damaged, not float weights torch can read ({type(exc).__name__}); train the run "
                         "again with --save-weights") from exc
    model = build_model(cfg, device)
    model.load_state_dict(state)
    return model


class Trainer:
    """Trains one config within cfg.train.budget_s, then evaluates and exports it."""

    def __init__(self, cfg: RunConfig, data_dir: Path, tokenizer_path: Path, out_dir: Path,
                 hooks: Hooks | None = None, device: str | None = None, echo: bool = True,
                 save_weights: bool = False):
        """Build everything the run needs, timing each start-up phase (pure overhead for a short run)."""
        self.wall_start = time.perf_counter()
        self.startup = PhaseTimer(self.wall_start)
        self.cfg, self.tc = cfg, cfg.train
        self.hooks = hooks if hooks is not None else NoHooks()
        self.rt = setup_runtime(device)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.out_dir / "train.log", self.rt.is_main, echo)
        self.log(f"config {json.dumps(cfg.to_dict(), sort_keys=True)}")
        check_export(cfg)  # a compressor missing here fails now, not after training
        self.data_dir = Path(data_dir)
        self.startup.done("runtime")
        self.table = self._byte_table(tokenizer_path)
        self.startup.done("tokenizer")
        self.val_tokens = load_val_tokens(data_dir, cfg.model.vocab_size, self.tc.final_val_tokens or None)
        self.val_prefix = self.val_tokens[: self.tc.val_prefix_tokens + 1]
        self.local_tokens, self.grad_accum = self.tc.split_batch(self.rt.world_size)
        self.startup.done("val")
        torch.manual_seed(self.tc.seed)
        self.model = build_model(cfg, self.rt.device)
        # Before compiling: techniques may set the model's mode (delayed recurrence) and hooks (late QAT).
        self.components = build_components(cfg, self.model, self.out_dir, save_weights)
        self.delayed_recurrence = self.tc.recurrence_start_fraction > 0 and self.model.has_repeats
        self.rt.synchronize()  # charge the weights' copy to the model phase, not to the next one
        self.startup.done("model")
        self.optimizers = build_optimizers(self.model, self.tc)
        self.startup.done("optimizers")
        self.net, self.evaluator = self._compile()
        self.startup.done("compile_wrap")
        self.batches = self._batches(data_dir)
        self.startup.done("data")
        self.step, self.train_s, self.train_tokens = 0, 0.0, 0
        self.train_flops = 0.0  # model FLOPs of the steps taken (fewer per token while recurrence is off)
        self.flops_per_token = {on: flops_per_token(cfg.model, self.tc.seq_len, recurrence_on=on)
                                for on in (False, True)}
        self.compile_s = self.wait_s = self.eval_s = 0.0
        self.peak_mem_bytes = 0
        compiled = self.tc.compile_scope if self.tc.compile and self.rt.on_gpu else "off"
        self.log(f"unique_params {unique_params(cfg.model):,} virtual_layers {len(self.model.schedule)} "
                 f"grad_accum {self.grad_accum} world {self.rt.world_size} device {self.rt.device} "
                 f"attention {self.model.attention_kernel} compile {compiled}")
        self.log(self.startup.line("startup"))
        self.hooks.attach(self)

    def _byte_table(self, tokenizer_path: Path) -> ByteTable:
        sp = load_sentencepiece(tokenizer_path)
        if sp.vocab_size() > self.cfg.model.vocab_size:
            raise ValueError(f"tokenizer has {sp.vocab_size()} pieces but model.vocab_size="
                             f"{self.cfg.model.vocab_size}; raise vocab_size")
        return byte_table(sp, self.cfg.model.vocab_size)

    def _batches(self, data_dir: Path) -> DistributedBatches | ShuffledWindows:
        """The training batches in train.data_order, this rank's share of each global batch."""
        rt = self.rt
        if self.tc.data_order == "shuffled":
            return ShuffledWindows(data_dir, self.cfg.model.vocab_size, self.tc.seq_len, self.tc.seed, rt.rank,
                                   rt.world_size, rt.device)
        return DistributedBatches(TokenStream(data_dir, self.cfg.model.vocab_size), rt.rank, rt.world_size, rt.device)

    def _compile(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(the module training steps run, the module evaluation runs): compiled and DDP-wrapped as configured."""
        compiled, evaluator = self.model, self.model
        if self.tc.compile and self.rt.on_gpu:
            _configure_inductor()
        if self.tc.compile and self.rt.on_gpu and self.tc.compile_scope == "layers":
            self.model.compile_layers(for_eval=self.tc.compile_eval)
        elif self.tc.compile and self.rt.on_gpu:
            compiled = torch.compile(self.model, dynamic=False)
            # Evaluation is forward-only over a few batches: compiling its graph cost ~27 s of a 180 s H100 run.
            evaluator = compiled if self.tc.compile_eval else self.model
        if self.rt.world_size > 1:
            device_ids = [self.rt.device.index] if self.rt.on_gpu else None
            # While recurrence is off the repeats' own MLPs and scalars get no gradient: DDP must look for them.
            return DistributedDataParallel(compiled, device_ids=device_ids, broadcast_buffers=False,
                                           find_unused_parameters=self.delayed_recurrence), evaluator
        return compiled, evaluator

    # ---- the steps hooks may call -----------------------------------------------------------------------------

    def train_step(self, step: int, train_s: float, scale: float | None = None) -> tuple[torch.Tensor, float]:
        """One optimizer step over a global batch at the schedule's LR (or at `scale`); its mean loss and LR scale."""
        scale = lr_scale(self.tc, step, train_s) if scale is None else scale
        set_schedule(self.optimizers, self.tc, step, train_s, scale)
        total = torch.zeros((), device=self.rt.device)
        for micro in range(self.grad_accum):
            x, y = self.batches.next(self.local_tokens, self.tc.seq_len)
            if self.rt.world_size > 1:
                self.net.require_backward_grad_sync = micro == self.grad_accum - 1
            loss = self.net(x, y)
            (loss / self.grad_accum).backward()
            total += loss.detach()
        if self.tc.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip_norm)
        for opt in self.optimizers:
            opt.step()
        self.model.zero_grad(set_to_none=True)
        return total / self.grad_accum, scale

    def evaluate(self, full: bool = False) -> EvalResult:
        """Score the model on the val prefix of intermediate reports, or (full) on the run's whole val split."""
        tokens = self.val_tokens if full else self.val_prefix
        with self._evaluating():
            return evaluate(self.evaluator, tokens, self.table, self.tc.seq_len, self.tc.val_batch_tokens,
                            self.rt.device, self.rt.rank, self.rt.world_size)

    def evaluate_sliding(self) -> EvalResult:
        """Score the run's whole val split by windows every train.eval_stride tokens."""
        with self._evaluating():
            return evaluate(self.evaluator, self.val_tokens, self.table, self.tc.seq_len, self.tc.val_batch_tokens,
                            self.rt.device, self.rt.rank, self.rt.world_size, stride=self.tc.eval_stride)

    @contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Between the components' before_eval and after_eval."""
        for component in self.components:
            component.before_eval(self)
        yield
        for component in self.components:
            component.after_eval(self)

    @contextmanager
    def counted_as_eval(self) -> Iterator[None]:
        """The seconds spent inside count as evaluation (eval_s)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.eval_s += time.perf_counter() - start

    def snapshot(self) -> tuple:
        """Copies of the weights, the optimizers' and the components' state, and the data position: what
        `rewind` goes back to."""
        return (copy.deepcopy(self.model.state_dict()), [copy.deepcopy(o.state_dict()) for o in self.optimizers],
                self.batches.state(), [copy.deepcopy(c.state_dict()) for c in self.components])

    def rewind(self, saved: tuple) -> None:
        """Back to a snapshot, as if the steps taken since had never run."""
        weights, optimizers, stream, components = saved
        self._load_components(components)
        self.model.load_state_dict(weights)
        for opt, state in zip(self.optimizers, optimizers):
            opt.load_state_dict(state)
        self.batches.restore(stream)

    def _load_components(self, states: list[dict]) -> None:
        """Components first, then the weights: a mode switch (recurrence on) may write weights the saved ones
        must then overwrite."""
        if len(states) != len(self.components):
            raise ValueError(f"the saved state holds {len(states)} components, this run has "
                             f"{len(self.components)}: it was saved by a run of another config")
        for component, state in zip(self.components, states):
            component.load_state_dict(state)

    def save_checkpoint(self, path: Path) -> None:
        """Write this rank's full training state (model, optimizers, components, counters, data position) into
        folder path."""
        Path(path).mkdir(parents=True, exist_ok=True)
        state = {"model": self.model.state_dict(), "optimizers": [o.state_dict() for o in self.optimizers],
                 "components": [c.state_dict() for c in self.components], "step": self.step,
                 "train_s": self.train_s, "train_tokens": self.train_tokens, "train_flops": self.train_flops,
                 "stream": self.batches.state()}
        torch.save(state, Path(path) / STATE_FILE.format(rank=self.rt.rank))

    # ---- the run, in order ------------------------------------------------------------------------------------

    def warm_up(self, initial: tuple) -> None:
        """Compile and warm the kernels on real steps, then rewind to `initial`: warm-up never counts as training.

        Under delayed recurrence both schedules run their steps (and evaluation), so the switch compiles nothing
        during timed training; the rewind then sets the starting mode again.
        """
        for mode in (False, True) if self.delayed_recurrence else (None,):
            if mode is not None:
                self.model.set_recurrence(mode)
            for _ in range(self.tc.compile_warmup_steps):
                self.train_step(0, 0.0)
            if self.tc.compile_eval and self.hooks.next_report_s(0.0) is not None:
                self.evaluate()  # compiles the evaluation graph that reports will run
        self.rewind(initial)
        self.rt.synchronize()

    def warm_up_and_wait(self) -> None:
        """Warm up (compile_s), then wait for the hooks to be ready (wait_s); a warm-up the hooks can make room
        for (warm_up_failed) runs again once they are, from the same initial weights."""
        start = time.perf_counter()
        retry = False
        if self.tc.compile_warmup_steps > 0:
            initial = self.snapshot()  # the data stream has not moved yet: it rewinds to its start
            try:
                self.warm_up(initial)
            except RuntimeError as exc:  # torch.OutOfMemoryError is one
                if not self.hooks.warm_up_failed(exc):
                    raise
                retry = True  # handled below, once the exception and the activations its frames hold are gone
        if retry:
            self.model.zero_grad(set_to_none=True)
            gc.collect()
            if self.rt.on_gpu:
                torch.cuda.empty_cache()
            self.wait_s = self._wait_until_ready()
            self.warm_up(initial)  # the graphs are compiled already: only the steps run again
            self.compile_s = time.perf_counter() - start - self.wait_s
        else:
            self.compile_s = time.perf_counter() - start
            self.wait_s = self._wait_until_ready()

    def _wait_until_ready(self) -> float:
        start = time.perf_counter()
        self.hooks.ready()
        return time.perf_counter() - start

    def resume(self, checkpoint_dir: Path) -> None:
        """Continue from a checkpoint that save_checkpoint wrote (this rank's state, else rank 0's)."""
        state_path = Path(checkpoint_dir) / STATE_FILE.format(rank=self.rt.rank)
        if not state_path.is_file():
            state_path = Path(checkpoint_dir) / STATE_FILE.format(rank=0)
        state = torch.load(state_path, map_location=self.rt.device, weights_only=True)
        self._load_components(state.get("components", []))  # checkpoints from before components had state: none
        self.model.load_state_dict(state["model"])
        for opt, opt_state in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(opt_state)
        self.step, self.train_s, self.train_tokens = state["step"], state["train_s"], state["train_tokens"]
        self.train_flops = state.get("train_flops", self.train_tokens * self.flops_per_token[True])
        self.batches.restore(state["stream"])
        self.log(f"resumed from {checkpoint_dir} at step {self.step}, train_s {self.train_s:.1f}")

    def fit(self) -> None:
        """Train until max_steps or the time budget, reporting whenever the hooks ask (reports are not training)."""
        tc = self.tc
        next_report_s = self.hooks.next_report_s(self.train_s)
        for component in self.components:
            component.on_train_start(self)
        if self.rt.on_gpu:
            torch.cuda.reset_peak_memory_stats(self.rt.device)
        self.rt.synchronize()
        t0 = time.perf_counter()
        while True:
            now_s = self.train_s + time.perf_counter() - t0
            scale = lr_scale(tc, self.step, now_s)
            for component in self.components:
                component.before_step(self, self.step, now_s, scale)
            loss, scale = self.train_step(self.step, now_s, scale)
            self.step += 1
            self.train_tokens += tc.batch_tokens
            self.train_flops += tc.batch_tokens * self.flops_per_token[self.model.recurrence_active]
            for component in self.components:
                component.after_step(self, self.step, scale)
            now_s = self.train_s + time.perf_counter() - t0
            stop = self.step >= tc.max_steps or now_s >= tc.budget_s
            if self.hooks.should_stop():  # checked every step, so a stopped run ends at once
                raise StopRequested(f"stopped by the caller at step {self.step}")
            stop = self.any_rank(stop)
            if self.step == 1 or self.step % tc.log_every_steps == 0 or stop:
                self._log_step(loss, scale, now_s)
            if next_report_s is not None and now_s >= next_report_s and not stop:
                self.rt.synchronize()
                self.train_s += time.perf_counter() - t0
                self._report()
                next_report_s = self.hooks.next_report_s(self.train_s)  # one report however many times were crossed
                t0 = time.perf_counter()
            if stop:
                break
        self.rt.synchronize()
        self.train_s += time.perf_counter() - t0
        self.peak_mem_bytes = torch.cuda.max_memory_allocated(self.rt.device) if self.rt.on_gpu else 0
        tokens_per_s, train_mfu = self._throughput()
        self.log(f"training done: {self.step} steps, {self.train_s:.1f}s, "
                 f"{1000 * self.train_s / max(self.step, 1):.1f} ms/step, {tokens_per_s:,.0f} tokens/s, "
                 f"MFU {100 * train_mfu:.1f}%, peak_mem {self.peak_mem_bytes / 2**30:.2f} GiB")
        for component in self.components:
            component.on_train_end(self)

    def _throughput(self) -> tuple[float, float]:
        """(tokens per training second, MFU) of the training so far; MFU counts each step's FLOPs in the
        schedule it ran (trainer.flops)."""
        tokens_per_s = self.train_tokens / max(self.train_s, 1e-9)
        flops_per_s = self.train_flops / max(self.train_s, 1e-9)
        return tokens_per_s, flops_per_s / (H100_BF16_DENSE_FLOPS * self.rt.world_size)

    def any_rank(self, flag: bool) -> bool:
        """Whether flag is true on any rank, so that every rank acts on the same step (stopping, switching)."""
        if self.rt.world_size == 1:
            return flag
        flag = torch.tensor(int(flag), device=self.rt.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _log_step(self, loss: torch.Tensor, scale: float, now_s: float) -> None:
        value = loss.item()
        check_finite(value, self.step)
        tokens_per_s = self.train_tokens / max(now_s, 1e-9)
        self.log(f"step {self.step} loss {value:.4f} train_s {now_s:.1f} step_ms {1000 * now_s / self.step:.1f} "
                 f"tokens_per_s {tokens_per_s:,.0f}")
        self.hooks.on_log(StepLog(self.step, value, scale, now_s, tokens_per_s))

    def _report(self) -> None:
        """Score the val prefix and hand it to the hooks with the means to checkpoint the run here."""
        with self.counted_as_eval():
            scored = self.evaluate()
        check_finite(scored.val_loss, self.step)
        metrics = {"step": self.step, "train_s": self.train_s, "train_tokens": self.train_tokens,
                   "val_bpb": scored.val_bpb, "val_loss": scored.val_loss, "val_bpb_prequant": scored.val_bpb,
                   "val_loss_prequant": scored.val_loss,
                   # so a run stopped after this report still tells where its time before training went
                   "startup_s": self.startup.total_s(), "compile_s": self.compile_s, "wait_s": self.wait_s}
        self.hooks.report(metrics, self.save_checkpoint)

    def export(self) -> RunMetrics:
        """Score the trained (or averaged) weights on the whole val split, write the artifact and score its round
        trip, plainly and (train.eval_stride) by sliding windows."""
        with self.counted_as_eval():
            pre = self.evaluate(full=True)
        self.log(f"val_bpb_prequant {pre.val_bpb:.4f} val_loss {pre.val_loss:.4f} over {pre.tokens:,} tokens / "
                 f"{pre.bytes:,} bytes")
        # Every rank quantizes the same weights to the same payload: GPTQ calibrates on a fresh stream from the
        # start of the training shards. Rank 0 compresses it to the artifact in a thread while the round-trip
        # evaluation runs on the weights decoded from that payload; the file is then checked to decompress to
        # exactly it, so the reported val_bpb is the artifact's (zstd-22: 3-25 s).
        export_start = time.perf_counter()
        artifact_path = self.out_dir / "model.ptz"
        from_train = self.cfg.export.gptq and self.cfg.export.gptq_calibration == "train"
        calibration = TokenStream(self.data_dir, self.cfg.model.vocab_size) if from_train else None
        payload, exported = export_payload(self.model, self.cfg, calibration)
        writing = BackgroundWrite(payload, self.cfg, artifact_path, exported.encoded) if self.rt.is_main else None
        self.model.load_state_dict(artifact.unpack(payload)[1])
        export_s = time.perf_counter() - export_start
        with self.counted_as_eval():
            post = self.evaluate(full=True)
            sliding = self.evaluate_sliding() if self.tc.eval_stride else None
        if self.rt.world_size == 1:
            self.hooks.done_with_device()  # a brotli write takes minutes of CPU: the GPU need not wait for it
        wait_start = time.perf_counter()
        info, write_s = writing.result() if writing is not None else (None, 0.0)
        if self.rt.world_size > 1:  # other ranks learn the compressed size from rank 0 (no shared filesystem needed)
            model_bytes = torch.tensor([info.model_bytes if info is not None else 0], device=self.rt.device)
            dist.broadcast(model_bytes, src=0)
            info = artifact.ArtifactInfo(int(model_bytes.item()), len(payload), artifact.code_bytes())
            self.hooks.done_with_device()
        export_s += time.perf_counter() - wait_start
        self.log(f"export: {dataclasses.replace(exported, artifact=info, write_s=write_s).describe()}")
        self.log(f"val_bpb {post.val_bpb:.4f} (round trip) artifact_bytes {info.artifact_bytes:,} "
                 f"(model {info.model_bytes:,} + code {info.code_bytes:,}) limit {self.cfg.export.limit_bytes:,}")
        if sliding is not None:
            self.log(f"val_bpb_sliding {sliding.val_bpb:.4f} val_loss {sliding.val_loss:.4f} (round trip, windows "
                     f"of {self.tc.seq_len} every {self.tc.eval_stride} tokens, {sliding.tokens:,} tokens scored once)")
        return self._metrics(pre, post, info, export_s, sliding, exported.upgraded_bits(self.cfg))

    def _metrics(self, pre: EvalResult, post: EvalResult, info: artifact.ArtifactInfo, export_s: float,
                 sliding: EvalResult | None = None, upgraded_bits: dict[str, int] | None = None) -> RunMetrics:
        tokens_per_s, train_mfu = self._throughput()
        extra = {}
        for component in self.components:
            extra.update(component.metrics())
        if sliding is not None:
            extra.update(val_bpb_sliding=sliding.val_bpb, val_loss_sliding=sliding.val_loss)
        return RunMetrics(
            val_bpb=post.val_bpb, val_loss=post.val_loss, val_bpb_prequant=pre.val_bpb,
            val_loss_prequant=pre.val_loss, val_tokens=post.tokens, val_bytes=post.bytes,
            artifact_bytes=info.artifact_bytes, model_bytes=info.model_bytes, code_bytes=info.code_bytes,
            payload_bytes=info.payload_bytes, limit_bytes=self.cfg.export.limit_bytes,
            over_limit=not artifact.within_limit(info, self.cfg.export), unique_params=unique_params(self.cfg.model),
            virtual_layers=len(self.model.schedule), steps=self.step, train_tokens=self.train_tokens,
            train_s=self.train_s, step_ms=1000 * self.train_s / max(self.step, 1), tokens_per_s=tokens_per_s,
            flops_per_token=self.train_flops / max(self.train_tokens, 1), mfu=train_mfu,
            peak_mem_bytes=self.peak_mem_bytes, startup_s=self.startup.total_s(), compile_s=self.compile_s,
            wait_s=self.wait_s, eval_s=self.eval_s, export_s=export_s, wall_s=time.perf_counter() - self.wall_start,
            world_size=self.rt.world_size, attention=self.model.attention_kernel,
            device=torch.cuda.get_device_name(self.rt.device) if self.rt.on_gpu else "cpu", config=self.cfg.to_dict(),
            upgraded_bits=upgraded_bits, **extra,
        )

    def write_metrics(self, metrics: RunMetrics) -> None:
        """out_dir/metrics.json (main rank)."""
        if self.rt.is_main:
            metrics.write(self.out_dir / METRICS_FILE)


def _configure_inductor() -> None:
    """Inductor settings the compiled model needs on every torch version it runs on."""
    import torch._inductor.config as inductor_config
    # torch 2.11's mix-order reduction fusion fails an assertion (FusedMixOrderReductions in sub_node_can_fuse)
    # while compiling the record stack's backward on H100; without the fusion the graph compiles.
    if hasattr(inductor_config.triton, "mix_order_reduction"):
        inductor_config.triton.mix_order_reduction = False
