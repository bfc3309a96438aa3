"""Mixed int5/int6 exports: the ranking, the greedy fill under the size model, its worst-case price, the header."""
import dataclasses
import itertools

import pytest
import torch

from tests.weights import trained_like
from trainer import artifact
from trainer import run_config as config
from trainer.bit_allocation import allocate, rank, uses
from trainer.model import GPT
from trainer.quant import dequantize_rows, quantize_rows
from trainer.sizing import size_model


def mixed_cfg(*overrides, limit=None):
    # Three shapes of block matrix: 64x64 (c_q, proj), 32x64 (c_k, c_v), 128x64 and 64x128 (the MLP).
    base = ["model.model_dim=64", "model.num_heads=2", "model.num_kv_heads=1", "model.vocab_size=128",
            "model.unique_blocks=3", "model.virtual_layers=[0,1,2,1,2]", "export.keep_float_max_numel=1024",
            "export.quant_bits=5", "export.upgrade_bits=6"]
    cfg = config.load(None, base + list(overrides))
    return cfg if limit is None else with_export(cfg, limit_bytes=limit)


def with_export(cfg, **values):
    return dataclasses.replace(cfg, export=dataclasses.replace(cfg.export, **values))


def state_of(cfg, seed=0):
    return trained_like(lambda: GPT(cfg.model), seed).state_dict()


def needed_bytes(cfg, bits):
    p = size_model.predict(cfg, bits=bits)
    return p.predicted_artifact_bytes + p.safety_margin_bytes


def all_upgraded(cfg):
    return {s.name: cfg.export.upgrade_bits for s in size_model.upgrade_candidates(cfg)}


def test_a_larger_limit_upgrades_more_matrices():
    cfg = mixed_cfg()
    state = state_of(cfg)
    low, high = needed_bytes(cfg, {}), needed_bytes(cfg, all_upgraded(cfg))
    assert high > low
    counts = [len(allocate(state, with_export(cfg, limit_bytes=limit)))
              for limit in [low - 1, low] + [low + (high - low) * k // 6 for k in range(1, 6)] + [high]]
    assert counts[0] == counts[1] == 0 and counts[-1] == len(all_upgraded(cfg)) == 18
    assert counts == sorted(counts) and len(set(counts)) >= 5


def test_the_allocation_fits_and_every_candidate_it_skipped_would_not():
    cfg = mixed_cfg()
    low, high = needed_bytes(cfg, {}), needed_bytes(cfg, all_upgraded(cfg))
    cfg = with_export(cfg, limit_bytes=(low + high) // 2)
    state = state_of(cfg)
    chosen = allocate(state, cfg)
    assert 0 < len(chosen) < 18 and set(chosen.values()) == {6}
    assert size_model.predict(cfg, bits=chosen).fits
    for name in set(all_upgraded(cfg)) - set(chosen):
        assert not size_model.predict(cfg, bits={**chosen, name: 6}).fits, name
    # Greedy down the ranking: each chosen matrix ranks above every one skipped before it.
    order = rank(state, cfg)
    first_skipped = next(i for i, name in enumerate(order) if name not in chosen)
    assert set(order[:first_skipped]) <= set(chosen)


def test_a_count_upgrades_at_most_that_many_of_the_most_sensitive():
    cfg = mixed_cfg("export.upgrade=4")
    state = state_of(cfg, seed=3)
    chosen = allocate(state, cfg)
    assert list(chosen) == rank(state, cfg)[:4]
    assert allocate(state, with_export(cfg, upgrade=0)) == {}
    assert allocate(state, with_export(cfg, upgrade_bits=5)) == {}  # not wider than quant_bits: off


def test_the_ranking_follows_the_hessian_and_the_number_of_calls():
    cfg = mixed_cfg()
    state = state_of(cfg)
    assert uses(cfg)["attns.0.c_q.weight"] == 1 and uses(cfg)["attns.1.c_q.weight"] == 2  # blocks 1, 2 run twice
    state["attns.1.c_q.weight"] = state["attns.0.c_q.weight"].clone()
    order = rank(state, cfg)
    assert order.index("attns.1.c_q.weight") < order.index("attns.0.c_q.weight")  # same weights, twice the calls
    hessians = {name: torch.eye(state[name].shape[1]) for name in all_upgraded(cfg)}
    hessians["mlps.0.fc.weight"] = 1000.0 * hessians["mlps.0.fc.weight"]
    assert rank(state, cfg, hessians)[0] == "mlps.0.fc.weight"


def test_the_worst_case_price_is_the_most_upgraded_codes_any_fitting_allocation_has():
    cfg = mixed_cfg()
    low, high = needed_bytes(cfg, {}), needed_bytes(cfg, all_upgraded(cfg))
    cfg = with_export(cfg, limit_bytes=low + (high - low) // 3)
    classes = {}
    for spec in size_model.upgrade_candidates(cfg):
        classes.setdefault(spec.numel, []).append(spec.name)
    best = 0
    for counts in itertools.product(*(range(len(names) + 1) for names in classes.values())):
        bits = {name: 6 for (numel, names), k in zip(classes.items(), counts) for name in names[:k]}
        if size_model.predict(cfg, bits=bits).fits:
            best = max(best, sum(numel * k for numel, k in zip(classes, counts)))
    worst = size_model.worst_case_upgrades(cfg)
    numel = {s.name: s.numel for s in size_model.upgrade_candidates(cfg)}
    assert sum(numel[name] for name in worst) == best > 0
    priced = size_model.predict(cfg)
    assert priced == size_model.predict(cfg, bits=worst) and priced.fits
    for seed in range(3):  # whatever the trained weights rank first, the export is within that price
        chosen = allocate(state_of(cfg, seed), cfg)
        assert size_model.predict(cfg, bits=chosen).predicted_model_bytes <= priced.predicted_model_bytes
    capped = with_export(cfg, upgrade=2)
    assert len(size_model.worst_case_upgrades(capped)) == 2
    assert size_model.predict(capped).predicted_model_bytes <= priced.predicted_model_bytes


def test_a_config_that_does_not_fit_without_upgrades_is_priced_without_them():
    cfg = mixed_cfg()
    tight = with_export(cfg, limit_bytes=needed_bytes(cfg, {}) - 1)
    assert size_model.worst_case_upgrades(tight) == {}
    assert not size_model.predict(tight).fits
    assert size_model.predict(tight) == size_model.predict(tight, bits={})


def test_the_header_carries_each_tensors_bits_and_the_payload_size_is_exact(tmp_path):
    cfg = mixed_cfg("export.embedding_bits=8")
    low, high = needed_bytes(cfg, {}), needed_bytes(cfg, all_upgraded(cfg))
    cfg = with_export(cfg, limit_bytes=(low + high) // 2)
    state = state_of(cfg)
    chosen = allocate(state, cfg)
    info = artifact.save(state, cfg, tmp_path / "m.ptz")
    payload = artifact.pack(state, cfg)
    assert info.payload_bytes == len(payload) == artifact.payload_bytes(cfg) == artifact.payload_bytes(cfg, bits=chosen)
    header = artifact.header_of(payload)
    assert header["format"] == 3
    bits = {e["name"]: e["bits"] for e in header["tensors"] if e["kind"] == "q"}
    assert bits["tok_emb.weight"] == 8
    assert {n: b for n, b in bits.items() if b == 6} == chosen
    assert all(b == 5 for n, b in bits.items() if n not in chosen and n != "tok_emb.weight")
    _, loaded = artifact.load(tmp_path / "m.ptz")
    for name, width in bits.items():
        expected = dequantize_rows(*quantize_rows(state[name], width, cfg.export.clip_quantile))
        assert torch.equal(loaded[name], expected), name


@pytest.mark.parametrize("init", ["normal", "uniform"])
def test_each_tensor_is_priced_at_the_bits_it_is_exported_at(init):
    cfg = mixed_cfg(f"model.weight_init={init}")
    one = {"mlps.0.fc.weight": 6}
    base, upgraded = size_model.features(cfg), size_model.features(cfg, bits=one)
    numel = 128 * 64
    if init == "normal":
        assert upgraded["code_bits"] - base["code_bits"] == pytest.approx(
            numel * (size_model.code_bits(6) - size_model.code_bits(5)))
    else:
        assert upgraded["uniform_code_bytes"] - base["uniform_code_bytes"] == numel * (6 - 5) / 8
    assert {k: v for k, v in upgraded.items() if k not in ("code_bits", "uniform_code_bytes")} == \
           {k: v for k, v in base.items() if k not in ("code_bits", "uniform_code_bytes")}
    wider, plain = size_model.predict(cfg, bits=one), size_model.predict(cfg, bits={})
    assert wider.predicted_model_bytes > plain.predicted_model_bytes
