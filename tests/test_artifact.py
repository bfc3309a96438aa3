import ast
from pathlib import Path

import pytest
import torch
import zstandard

from tests.weights import trained_like
from trainer import artifact, compress
from trainer import run_config as config
from trainer.model import GPT
from trainer.model_config import ExportConfig

TRAINER_DIR = Path(__file__).resolve().parents[1] / "trainer"


def small_cfg(*overrides):
    base = ["model.model_dim=128", "model.num_heads=4", "model.num_kv_heads=2", "model.vocab_size=512",
            "export.keep_float_max_numel=4096"]
    return config.load(None, base + list(overrides))


def small_trained_like_model(cfg):
    """A model whose weights have a trained model's scale (seeded, Gaussian)."""
    return trained_like(lambda: GPT(cfg.model))


def test_save_load_round_trip_and_exact_payload_size(tmp_path):
    cfg = small_cfg("model.unique_blocks=3", "model.virtual_layers=[0,1,2,0,1,2]", "model.depth_signal=learned")
    model = small_trained_like_model(cfg)
    info = artifact.save(model.state_dict(), cfg, tmp_path / "m.ptz")
    assert info.payload_bytes == artifact.payload_bytes(cfg)
    assert info.model_bytes == (tmp_path / "m.ptz").stat().st_size
    loaded_cfg, state = artifact.load(tmp_path / "m.ptz")
    assert loaded_cfg.model == cfg.model and loaded_cfg.export == cfg.export
    original = model.state_dict()
    assert set(state) == set(original)
    for name, tensor in state.items():
        assert tensor.shape == original[name].shape
        tol = 0.02 if tensor.ndim == 2 and tensor.numel() > 4096 else 1e-3
        assert (tensor - original[name]).abs().max() < tol, name
    GPT(loaded_cfg.model).load_state_dict(state)  # strict load works


def test_shared_blocks_are_stored_once():
    once = small_cfg("model.unique_blocks=2")
    looped = small_cfg("model.unique_blocks=2", "model.virtual_layers=[0,1,0,1,0,1]")
    quantized_once = sum(1 for e in artifact._tensor_table(once) if e["kind"] == "q")
    quantized_looped = sum(1 for e in artifact._tensor_table(looped) if e["kind"] == "q")
    assert quantized_once == quantized_looped  # repeats add no matrices
    grow = artifact.payload_bytes(looped) - artifact.payload_bytes(once)
    assert 0 < grow < 20_000  # only per-layer scalars, skip weights and header text


def test_int6_codes_stay_in_range(tmp_path):
    cfg = small_cfg("export.quant_bits=6")
    model = GPT(cfg.model)
    for p in model.parameters():
        p.data.normal_()
    artifact.save(model.state_dict(), cfg, tmp_path / "m.ptz")
    payload = compress.decode((tmp_path / "m.ptz").read_bytes())
    table = artifact._tensor_table(cfg)
    start = len(payload) - sum(artifact.stored_bytes(s, cfg.export) for s in artifact.layout_for(cfg))
    first = next(e for e in table if e["kind"] == "q")
    n = first["shape"][0] * first["shape"][1]
    codes = torch.frombuffer(bytearray(payload[start + first["codes"] : start + first["codes"] + n]), dtype=torch.int8)
    assert codes.abs().max().item() <= 31


@pytest.mark.parametrize("embedding_bits", [8, 16])
def test_a_wider_embedding_is_stored_wider_and_sized_exactly(tmp_path, embedding_bits):
    cfg = small_cfg("export.quant_bits=6", f"export.embedding_bits={embedding_bits}")
    narrow = small_cfg("export.quant_bits=6")
    model = small_trained_like_model(cfg)
    info = artifact.save(model.state_dict(), cfg, tmp_path / "m.ptz")
    assert info.payload_bytes == artifact.payload_bytes(cfg)
    loaded_cfg, state = artifact.load(tmp_path / "m.ptz")
    assert loaded_cfg.export.embedding_bits == embedding_bits
    _, narrow_state = artifact.unpack(artifact.pack(model.state_dict(), narrow))
    emb, fc = "tok_emb.weight", next(n for n in state if n.endswith("fc.weight"))
    original = model.state_dict()
    error = {name: (s[emb] - original[emb]).abs().max().item() for name, s in (("wide", state), ("narrow", narrow_state))}
    assert error["wide"] < error["narrow"] / 3  # int8: 127 steps a row against int6's 31; float16: ~1e-5
    assert torch.equal(state[fc], narrow_state[fc])  # the block matrices are untouched


def _module_level_trainer_imports(path: Path) -> tuple[set[str], list[tuple[int, str]]]:
    """(trainer modules a file imports at module level, (line, module) of those it imports inside a function)."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    at_top, in_functions = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "trainer":
            if node.module == "trainer":  # `from trainer import compress`: submodules by name
                names = {f"trainer.{a.name}" for a in node.names if (TRAINER_DIR / f"{a.name}.py").is_file()}
            else:
                names = {node.module}
        elif isinstance(node, ast.Import):
            names = {a.name for a in node.names if a.name.split(".")[0] == "trainer"}
        else:
            continue
        if id(node) in top_level:
            at_top |= names
        else:
            in_functions += [(node.lineno, name) for name in sorted(names)]
    return at_top, in_functions


def _shipped_closure() -> set[str]:
    """File names of trainer/ that importing trainer.model and trainer.artifact executes, found by reading the
    sources' import statements (not CODE_FILES): the package's __init__.py and every module reached."""
    files, todo = {"__init__.py"}, ["trainer.model", "trainer.artifact"]
    while todo:
        name = todo.pop()
        file = name.split(".", 1)[1].replace(".", "/") + ".py"
        if file in files:
            continue
        files.add(file)
        at_top, _ = _module_level_trainer_imports(TRAINER_DIR / file)
        todo += sorted(at_top)
    return files


def test_every_module_the_model_and_artifact_import_is_counted_as_code():
    """A file that rebuilding the model needs can never be left out of the code bytes: the modules trainer.model and
    trainer.artifact import (transitively) are exactly CODE_FILES, and code_bytes is their bytes read here."""
    shipped = _shipped_closure()
    assert {"model.py", "artifact.py", "quant.py", "compress.py", "__init__.py"} <= shipped
    assert set(artifact.CODE_FILES) == shipped
    assert artifact.code_bytes() == sum(len((TRAINER_DIR / f).read_bytes()) for f in shipped) > 10_000
    # An import inside a function of a shipped file is an export-only path, and says so where it stands.
    for file in sorted(shipped):
        lines = (TRAINER_DIR / file).read_text().splitlines()
        for lineno, name in _module_level_trainer_imports(TRAINER_DIR / file)[1]:
            shipped_too = name.split(".", 1)[1].replace(".", "/") + ".py" in shipped
            assert shipped_too or "not shipped" in lines[lineno - 1], f"{file}:{lineno} imports {name} unmarked"


def test_within_limit_counts_the_code_bytes_too():
    export = ExportConfig(limit_bytes=1_000)
    assert artifact.within_limit(artifact.ArtifactInfo(model_bytes=900, payload_bytes=5_000, code_bytes=100), export)
    # The compressed weights alone fit; with the code they are one byte over.
    assert not artifact.within_limit(artifact.ArtifactInfo(model_bytes=900, payload_bytes=5_000, code_bytes=101),
                                     export)
    assert not artifact.within_limit(artifact.ArtifactInfo(model_bytes=1_001, payload_bytes=5_000, code_bytes=0),
                                     export)


def test_bad_files_give_clear_errors(tmp_path):
    (tmp_path / "junk.ptz").write_bytes(b"not an artifact")
    with pytest.raises(artifact.ArtifactError, match="not a zstd artifact"):
        artifact.load(tmp_path / "junk.ptz")
    (tmp_path / "other.ptz").write_bytes(zstandard.ZstdCompressor().compress(b"PK\x03\x04 pickle or zip"))
    with pytest.raises(artifact.ArtifactError, match="wrong magic"):
        artifact.load(tmp_path / "other.ptz")


def test_state_that_does_not_match_config_is_rejected(tmp_path):
    cfg = small_cfg("model.unique_blocks=2")
    other = small_cfg("model.unique_blocks=3")
    with pytest.raises(artifact.ArtifactError, match="does not match"):
        artifact.save(GPT(cfg.model).state_dict(), other, tmp_path / "m.ptz")


def test_training_settings_do_not_change_the_artifact_size(tmp_path):
    # The header keeps model + export only: a new training knob must not move any artifact's bytes.
    cfg = small_cfg()
    tuned = small_cfg("train.budget_s=17", "train.attention=sdpa_cudnn", "train.max_steps=9")
    assert artifact.payload_bytes(tuned) == artifact.payload_bytes(cfg)
    state = GPT(cfg.model).state_dict()
    assert artifact.save(state, tuned, tmp_path / "a.ptz") == artifact.save(state, cfg, tmp_path / "b.ptz")


def test_unpack_of_a_payload_matches_load_of_its_file_and_holds_checks_the_file(tmp_path):
    cfg = small_cfg("model.unique_blocks=2")
    torch.manual_seed(0)
    state = GPT(cfg.model).state_dict()
    payload = artifact.pack(state, cfg)
    info = artifact.write(payload, cfg, tmp_path / "m.ptz")
    assert info.model_bytes == (tmp_path / "m.ptz").stat().st_size and info.payload_bytes == len(payload)
    from_memory, from_file = artifact.unpack(payload)[1], artifact.load(tmp_path / "m.ptz")[1]
    assert all(torch.equal(from_memory[k], from_file[k]) for k in from_file)
    assert artifact.holds(tmp_path / "m.ptz", payload)
    assert not artifact.holds(tmp_path / "m.ptz", payload[:-1] + bytes([payload[-1] ^ 1]))
    with pytest.raises(artifact.ArtifactError, match="wrong magic"):
        artifact.unpack(b"not an artifact payload")


def test_compress_keeps_the_smaller_of_the_strong_and_the_fast_level():
    import numpy as np

    rng = np.random.default_rng(0)
    # Gaussian 5-bit codes, one per byte, as int5 weights are stored: level 1 beats level 22 here.
    codes = np.clip(np.round(rng.normal(0, 4.4, 200_000)), -15, 15).astype(np.int8).tobytes()
    block, filler = rng.bytes(100_000), rng.bytes(1_200_000)
    structured = block + filler + block  # a repeat farther back than level 1's window: level 22 wins
    for payload in (codes, structured):
        sizes = {level: len(zstandard.ZstdCompressor(level=level).compress(payload)) for level in (1, 22)}
        blob = artifact.compress(payload, 22)
        assert len(blob) == min(sizes.values())
        assert zstandard.ZstdDecompressor().decompress(blob) == payload
    assert len(artifact.compress(codes, 22)) == len(zstandard.ZstdCompressor(level=1).compress(codes)) < len(
        zstandard.ZstdCompressor(level=22).compress(codes))
    assert len(artifact.compress(structured, 22)) == len(zstandard.ZstdCompressor(level=22).compress(structured)) < len(
        zstandard.ZstdCompressor(level=1).compress(structured))
    assert artifact.compress(codes, 1) == zstandard.ZstdCompressor(level=1).compress(codes)
