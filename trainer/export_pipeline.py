"""The export at the end of training: calibration batches and GPTQ Hessians when asked for, then pack and write.

The training loop and `trainer export` call export_payload, then write it with BackgroundWrite while they score the
round trip; everything the export section asks for (GPTQ, mixed widths, the compressor) happens here or in what it calls.
With export.upgrade_fit=measured the widths are chosen by compressing (trainer.fill), and the file bytes of the kept
payload come along to be written.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer import artifact, compress
from trainer.data.shards import TokenStream
from trainer.fill import fill
from trainer.gptq import calibration_batches, collect_hessians, generate_calibration
from trainer.model import GPT
from trainer.model_config import ConfigError, artifact_config_from_dict
from trainer.quant import bits_for
from trainer.run_config import RunConfig
from trainer.schedule import tensor_layout
from trainer.sizing.size_model import upgrades_on


@dataclass(frozen=True)
class ExportInfo:
    """What an export wrote: the artifact's sizes, the width of each quantized tensor, and where the time went."""

    artifact: artifact.ArtifactInfo | None  # None until written
    bits: dict[str, int]
    calibration_tokens: int
    calibration_s: float
    pack_s: float
    write_s: float
    encoded: bytes | None = field(default=None, repr=False, compare=False)  # the file bytes, when already made
    fill: str = ""  # how export.upgrade_fit=measured chose the widths

    def upgraded_bits(self, cfg: RunConfig) -> dict[str, int]:
        """The tensors exported off their config width, with their widths (what metrics.json records)."""
        return off_width_bits(self.bits, cfg)

    def describe(self) -> str:
        """One line: bytes, compressor, widths and seconds."""
        widths = sorted(set(self.bits.values()))
        mixed = ", ".join(f"{sum(b == w for b in self.bits.values())} at int{w}" for w in widths)
        sizes = "payload not written" if self.artifact is None else (
            f"artifact {self.artifact.artifact_bytes:,} bytes (model {self.artifact.model_bytes:,} "
            f"{self.artifact.compressor} + code {self.artifact.code_bytes:,})")
        fill = f"; {self.fill}" if self.fill else ""
        return (f"{sizes}; quantized tensors: {mixed}{fill}; calibration {self.calibration_tokens:,} tokens "
                f"{self.calibration_s:.1f} s, pack {self.pack_s:.1f} s, write {self.write_s:.1f} s")


def check_export(cfg: RunConfig) -> None:
    """Raise ConfigError now for an export this machine cannot write (run it before training, not after)."""
    if cfg.export.compressor not in ("best", *compress.available()):
        raise ConfigError(f"export.compressor: {cfg.export.compressor} is not installed here; "
                          f"pip install {cfg.export.compressor} (or pip install '.[brotli]'), or use zstd or best")


def calibration(model: GPT, cfg: RunConfig, stream: TokenStream | None) -> list[torch.Tensor]:
    """The batches GPTQ measures its Hessians on: training tokens from the stream, or the model's own text."""
    export, seq_len = cfg.export, cfg.train.seq_len
    if export.gptq_calibration == "generated":
        return generate_calibration(model, export.gptq_calibration_batches, export.gptq_calibration_batch_tokens,
                                    seq_len, export.gptq_temperature, seed=cfg.train.seed)
    if stream is None:
        raise ConfigError("export.gptq_calibration: train needs a stream of training tokens; pass one, "
                          "or set export.gptq_calibration=generated")
    return calibration_batches(stream, export.gptq_calibration_batches, export.gptq_calibration_batch_tokens, seq_len)


def export_payload(model: GPT, cfg: RunConfig, calibration_stream: TokenStream | None) -> tuple[bytes, ExportInfo]:
    """The quantized payload of the model's weights as cfg.export says, unwritten (every rank of a distributed run
    gets the same bytes from the same weights and calibration tokens; one of them writes it)."""
    check_export(cfg)
    start = time.perf_counter()
    hessians, tokens = None, 0
    if cfg.export.gptq:
        batches = calibration(model, cfg, calibration_stream)
        tokens = sum(batch.numel() for batch in batches)
        hessians = collect_hessians(model, batches)
    calibrated = time.perf_counter()
    encoded, how = None, ""
    if cfg.export.upgrade_fit == "measured" and upgrades_on(cfg.export):
        filled = fill(model.state_dict(), cfg, hessians)
        payload, encoded = filled.payload, filled.blob
        how = filled.describe()
    else:
        payload = artifact.pack(model.state_dict(), cfg, hessians)
    info = ExportInfo(artifact=None, bits=tensor_bits(payload), calibration_tokens=tokens,
                      calibration_s=calibrated - start, pack_s=time.perf_counter() - calibrated, write_s=0.0,
                      encoded=encoded, fill=how)
    return payload, info


def export_artifact(model: GPT, cfg: RunConfig, calibration_stream: TokenStream | None,
                    path: Path) -> tuple[bytes, ExportInfo]:
    """Quantize the model's weights as cfg.export says and write the artifact to path; return the payload (what
    the round-trip evaluation should load) and what was written.

    calibration_stream: training tokens for GPTQ (read on from where it is; unused without export.gptq).
    """
    payload, info = export_payload(model, cfg, calibration_stream)
    written, write_s = timed_write(payload, cfg, path, info.encoded)
    return payload, dataclasses.replace(info, artifact=written, write_s=write_s)


def timed_write(payload: bytes, cfg: RunConfig, path: Path,
                blob: bytes | None = None) -> tuple[artifact.ArtifactInfo, float]:
    """artifact.write (it can run in a thread), and its seconds."""
    start = time.perf_counter()
    info = artifact.write(payload, cfg, path, blob)
    return info, time.perf_counter() - start


class BackgroundWrite:
    """Compress a payload to its artifact file in a thread while the caller scores the round trip (the codecs release
    the GIL); result() waits for it and checks that the file decompresses to exactly that payload, so the score
    reported is the file's."""

    def __init__(self, payload: bytes, cfg: RunConfig, path: Path, blob: bytes | None = None):
        self.payload, self.path = payload, Path(path)
        pool = ThreadPoolExecutor(max_workers=1)
        self._written = pool.submit(timed_write, payload, cfg, self.path, blob)
        pool.shutdown(wait=False)  # its one thread ends with the write

    def result(self) -> tuple[artifact.ArtifactInfo, float]:
        """The written artifact's sizes and the write's seconds; ArtifactError if the file differs from the payload."""
        info, write_s = self._written.result()
        if not artifact.holds(self.path, self.payload):
            raise artifact.ArtifactError(
                f"{self.path} does not decompress to the payload that was evaluated (damaged on write): do not "
                "submit it; delete it and export again (python -m trainer export RUN_DIR, from the run's weights.pt)")
        return info, write_s


def off_width_bits(bits: dict[str, int], cfg: RunConfig) -> dict[str, int]:
    """The tensors of an allocation exported off their config width (a mixed export's upgrades), with their widths."""
    specs = {spec.name: spec for spec in tensor_layout(cfg.model)}
    return {name: b for name, b in sorted(bits.items()) if b != bits_for(specs[name], cfg.export)}


def tensor_bits(payload: bytes) -> dict[str, int]:
    """The width of each quantized tensor in a payload (a format-2 header implies them from its config)."""
    header = artifact.header_of(payload)
    cfg = artifact_config_from_dict(header["config"], where="payload")
    specs = {spec.name: spec for spec in tensor_layout(cfg.model)}
    return {e["name"]: e.get("bits") or bits_for(specs[e["name"]], cfg.export)
            for e in header["tensors"] if e["kind"] == "q"}
