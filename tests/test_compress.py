"""The artifact file: codecs, the byte shuffle, the checksummed container, and artifacts written before it."""
import dataclasses
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard

from tests.weights import trained_like
from trainer import artifact, compress
from trainer import run_config as config
from trainer.model import GPT
from trainer.model_config import ConfigError
from trainer.quant import dequantize_rows, quantize_rows

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def small_cfg(*overrides):
    base = ["model.model_dim=64", "model.num_heads=2", "model.num_kv_heads=1", "model.vocab_size=128",
            "model.unique_blocks=2", "export.keep_float_max_numel=1024", "export.quant_bits=6"]
    return config.load(None, base + list(overrides))


def trained_like_state(cfg, seed=0):
    return trained_like(lambda: GPT(cfg.model), seed).state_dict()


@pytest.mark.parametrize("codec", compress.CODECS)
@pytest.mark.parametrize("shuffle", [False, True])
def test_each_codec_round_trips_the_payload_exactly(tmp_path, codec, shuffle):
    cfg = small_cfg(f"export.compressor={codec}", f"export.byte_shuffle={str(shuffle).lower()}")
    payload = artifact.pack(trained_like_state(cfg), cfg)
    info = artifact.write(payload, cfg, tmp_path / "m.ptz")
    blob = (tmp_path / "m.ptz").read_bytes()
    assert info.compressor == codec == compress.codec_of(blob) and info.model_bytes == len(blob)
    assert blob[:4] == compress.MAGIC and blob[6] == shuffle
    assert artifact.holds(tmp_path / "m.ptz", payload)
    loaded_cfg, state = artifact.load(tmp_path / "m.ptz")
    expected = artifact.unpack(payload)[1]
    assert loaded_cfg.export == cfg.export and all(torch.equal(state[k], expected[k]) for k in expected)


def test_the_shuffle_splits_the_fp16_part_into_low_and_high_byte_planes():
    cfg = small_cfg()
    payload = artifact.pack(trained_like_state(cfg), cfg)
    start = artifact.fp16_start(payload)
    fp16_values = sum(e["shape"][0] if e["kind"] == "q" else int(np.prod(e["shape"]))
                      for e in artifact.header_of(payload)["tensors"])  # a scale per row, every float tensor
    assert len(payload) - start == 2 * fp16_values
    shuffled = compress.shuffle(payload, start)
    halves = np.frombuffer(payload, np.uint8, offset=start).reshape(-1, 2)
    assert shuffled[:start] == payload[:start]
    assert shuffled[start:] == halves[:, 0].tobytes() + halves[:, 1].tobytes()
    assert compress.shuffle(shuffled, start, inverse=True) == payload
    odd = payload + b"\x07"  # an odd tail byte stays where it is
    assert compress.shuffle(compress.shuffle(odd, start), start, inverse=True) == odd


def test_best_keeps_the_smallest_codec_and_is_never_larger_than_zstd(tmp_path):
    cfg = small_cfg("export.compressor=best")
    payload = artifact.pack(trained_like_state(cfg), cfg)
    info = artifact.write(payload, cfg, tmp_path / "best.ptz")
    sizes = {codec: len(compress.encode(payload, codec, cfg.export.zstd_level)) for codec in compress.available()}
    assert info.model_bytes == min(sizes.values()) <= sizes["zstd"]
    assert sizes[info.compressor] == info.model_bytes
    assert artifact.holds(tmp_path / "best.ptz", payload)


def test_the_zstd_file_is_the_container_header_plus_the_compressed_payload(tmp_path):
    cfg = small_cfg()
    payload = artifact.pack(trained_like_state(cfg), cfg)
    info = artifact.write(payload, cfg, tmp_path / "m.ptz")
    assert info.model_bytes == compress.CONTAINER_BYTES + len(artifact.compress(payload, cfg.export.zstd_level))


def write_small_artifact(tmp_path, codec):
    cfg = small_cfg(f"export.compressor={codec}", "export.byte_shuffle=true")
    state = trained_like_state(cfg)
    path = tmp_path / f"{codec}.ptz"
    artifact.save(state, cfg, path)
    return path, path.read_bytes(), artifact.load(path)[1]


@pytest.mark.parametrize("codec", compress.CODECS)
def test_a_flipped_byte_anywhere_is_an_error_naming_the_file(tmp_path, codec):
    path, blob, original = write_small_artifact(tmp_path, codec)
    rng = np.random.default_rng(0)
    positions = list(range(compress.CONTAINER_BYTES + 8)) + sorted(rng.choice(len(blob), 150, replace=False))
    positions.append(len(blob) - 1)
    for position in positions:
        damaged = bytearray(blob)
        damaged[position] ^= 0xFF
        path.write_bytes(bytes(damaged))
        with pytest.raises(artifact.ArtifactError) as err:
            artifact.load(path)
        assert str(path) in str(err.value), position
        assert "damaged" in str(err.value)
    path.write_bytes(blob)
    assert all(torch.equal(t, original[k]) for k, t in artifact.load(path)[1].items())


@pytest.mark.parametrize("codec", compress.CODECS)
def test_a_truncated_file_is_an_error_naming_the_file(tmp_path, codec):
    path, blob, _ = write_small_artifact(tmp_path, codec)
    for length in (0, 3, compress.CONTAINER_BYTES - 1, compress.CONTAINER_BYTES, compress.CONTAINER_BYTES + 10,
                   len(blob) // 2, len(blob) - 1):
        path.write_bytes(blob[:length])
        with pytest.raises(artifact.ArtifactError, match="damaged") as err:
            artifact.load(path)
        assert str(path) in str(err.value)


def test_the_checksum_message_says_how_to_fix_it(tmp_path):
    path, blob, _ = write_small_artifact(tmp_path, "zstd")
    damaged = bytearray(blob)
    damaged[compress.CONTAINER_BYTES - 1] ^= 1  # the last byte of the stored sha256
    path.write_bytes(bytes(damaged))
    with pytest.raises(artifact.ArtifactError) as err:
        artifact.load(path)
    assert str(err.value) == (f"{path} is damaged: checksum mismatch; re-export it with `python -m trainer export`")


def fixture_state(header: dict) -> dict[str, torch.Tensor]:
    """The weights the format-1 and format-2 fixtures were written from (pack of the code at 764af28)."""
    state = {}
    for entry in header["tensors"]:
        n = int(np.prod(entry["shape"]))
        frequency = 0.1 + (zlib.crc32(entry["name"].encode()) % 97) / 1000
        values = 0.05 * torch.sin((torch.arange(n, dtype=torch.float64) + 1) * frequency)
        state[entry["name"]] = values.float().reshape(entry["shape"])
    return state


@pytest.mark.parametrize("fixture,version", [("artifact_format1.ptz", 1), ("artifact_format2.ptz", 2)])
def test_artifacts_written_before_the_container_still_load(fixture, version):
    blob = (FIXTURES / fixture).read_bytes()
    assert blob[:4] == b"\x28\xb5\x2f\xfd"  # a bare zstd frame
    header = artifact.header_of(zstandard.ZstdDecompressor().decompress(blob))
    assert header["format"] == version and "bits" not in header["tensors"][0]
    cfg, state = artifact.load(FIXTURES / fixture)
    assert cfg.export.quant_bits == 6 and cfg.model.virtual_layers == (0, 1, 0, 1) and not cfg.export.gptq
    source = fixture_state(header)
    assert set(state) == set(source)
    for entry in header["tensors"]:
        name = entry["name"]
        if entry["kind"] == "q":
            expected = dequantize_rows(*quantize_rows(source[name], 6, cfg.export.clip_quantile))
        else:
            expected = source[name].half().float()
        assert torch.equal(state[name], expected), name


def test_an_export_with_no_new_setting_writes_the_format_2_payload_as_before():
    fixture = zstandard.ZstdDecompressor().decompress((FIXTURES / "artifact_format2.ptz").read_bytes())
    cfg, _ = artifact.unpack(fixture)
    assert artifact.header_format(cfg.export) == 2
    assert artifact.pack(fixture_state(artifact.header_of(fixture)), cfg) == fixture  # byte for byte
    for setting in ({"compressor": "lzma"}, {"byte_shuffle": True}, {"gptq_damp": 0.02}):
        changed = dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, **setting))
        assert artifact.header_format(changed.export) == 3
        assert artifact.payload_bytes(changed) > artifact.payload_bytes(cfg)


def test_junk_and_bare_zstd_of_something_else_are_rejected_clearly(tmp_path):
    (tmp_path / "junk.ptz").write_bytes(b"not an artifact")
    with pytest.raises(artifact.ArtifactError, match="not a zstd artifact"):
        artifact.load(tmp_path / "junk.ptz")


def test_a_config_asking_for_brotli_where_it_is_not_installed_says_how_to_install_it(tmp_path, monkeypatch):
    from trainer.export_pipeline import check_export

    cfg = small_cfg("export.compressor=brotli")
    path, _, _ = write_small_artifact(tmp_path, "brotli")
    monkeypatch.setitem(__import__("sys").modules, "brotli", None)  # what `import brotli` meets without the package
    assert compress.available() == ("zstd", "lzma")
    with pytest.raises(ConfigError, match=r"pip install brotli"):
        check_export(cfg)
    with pytest.raises(ValueError, match=r"pip install brotli"):
        artifact.write(b"", cfg, tmp_path / "x.ptz")
    with pytest.raises(ValueError, match=r"pip install brotli"):
        artifact.load(path)
    best = small_cfg("export.compressor=best")
    info = artifact.save(trained_like_state(best), best, tmp_path / "best.ptz")
    assert info.compressor in ("zstd", "lzma")


def test_export_config_rejects_unknown_compressors_and_calibrations():
    for bad in ("export.compressor=gzip", "export.gptq_calibration=val", "export.upgrade=some",
                "export.upgrade_bits=7", "export.gptq_damp=1.5"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            config.load(None, [bad])
