"""The benchmark scripts: they parse, document their settings, refuse bad settings with one line and exit 2, and
two of them run end to end on the CPU (SMOKE=1) with the tiny corpus; benchmarks/tables.py reads real results."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_MODEL

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SHELL_FILES = sorted(BENCH.rglob("*.sh"))
SCRIPTS = sorted(p for p in BENCH.glob("*.sh") if p.name != "lib.sh")
RESULTS = BENCH / "results"


def run_script(script: Path, env: dict, *args: str, timeout: int = 60) -> subprocess.CompletedProcess:
    """The script under bash with exactly these settings (plus PATH and the repository on PYTHONPATH)."""
    full = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(["bash", str(script), *args], env=full, capture_output=True, text=True, timeout=timeout,
                          cwd="/")


def header_lines(script: Path) -> list[str]:
    """The comment lines after the shebang, without their '# ', as --help prints them."""
    lines = []
    for line in script.read_text().splitlines()[1:]:
        if not line.startswith("#"):
            break
        lines.append(re.sub(r"^# ?", "", line))
    return lines


def header(script: Path) -> str:
    return "\n".join(header_lines(script))


def test_there_are_benchmark_scripts_and_no_call_numbered_ones():
    names = {p.name for p in SCRIPTS}
    assert {"step_time.sh", "search_then_rerun.sh", "size_calibration.sh", "rung_fidelity.sh"} <= names
    assert not [p for p in SHELL_FILES if re.match(r"call\d", p.name)]


@pytest.mark.parametrize("path", SHELL_FILES, ids=lambda p: str(p.relative_to(BENCH)))
def test_every_shell_file_parses(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help_prints_the_header_and_exits_0(script):
    result = run_script(script, {}, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(header(script).strip() + "\n\nEvery benchmark script also takes RESULT_DATE=")
    for name in ("DATA=", "TOKENIZER=", "OUT=", "SMOKE=1"):
        assert name in result.stdout


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_setting_the_script_reads_is_documented_in_its_header(script):
    body = "\n".join(script.read_text().splitlines()[1 + len(header_lines(script)):])
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*):?[-+]", body))
    undocumented = {name for name in read if not re.search(rf"\b{name}\b", header(script))}
    assert not undocumented, f"{script.name} reads {sorted(undocumented)} but its header does not name them"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("missing", ["DATA", "TOKENIZER", "OUT"])
def test_a_missing_required_setting_is_one_line_and_exit_2(script, missing, tmp_path):
    tokenizer = tmp_path / "tok.model"
    tokenizer.write_text("x")
    env = {"DATA": str(tmp_path), "TOKENIZER": str(tokenizer), "OUT": str(tmp_path / "out")}
    del env[missing]
    result = run_script(script, env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{missing} is not set" in lines[0] and script.name in lines[0]
    assert not (tmp_path / "out").exists()  # nothing was written


# A setting each script checks, a bad value of it and the line it answers with; scripts not listed take BUDGET_S.
BAD_SETTING = {"recipe_parity.sh": ("STEPS", "soon", "STEPS=soon is not a whole number of steps", "654")}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_bad_setting_is_named_with_exit_2(script, tmp_path):
    tokenizer = tmp_path / "tok.model"
    tokenizer.write_text("x")
    name, bad, line, good = BAD_SETTING.get(
        script.name, ("BUDGET_S", "soon", "BUDGET_S=soon is not a positive number of seconds", "10"))
    env = {"DATA": str(tmp_path), "TOKENIZER": str(tokenizer), "OUT": str(tmp_path / "out"), name: bad}
    result = run_script(script, env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"{script.name}: {line}"]
    assert not (tmp_path / "out").exists()  # bad settings leave nothing behind
    missing_data = run_script(script, {**env, name: good, "DATA": str(tmp_path / "nowhere")})
    assert missing_data.returncode == 2 and "DATA=" in missing_data.stderr and "is not a folder" in missing_data.stderr
    stray = run_script(script, {**env, name: good}, "--budget-s")
    assert stray.returncode == 2 and "settings are environment variables" in stray.stderr


@pytest.fixture
def tiny_config(tmp_path, tiny_corpus) -> Path:
    """A run config of the tiny model, for --smoke runs on the tiny corpus."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"model": dict(TINY_MODEL, vocab_size=tiny_corpus["vocab_size"]), "train": {},
                                    "export": {}}))
    return path


def corpus_env(corpus: dict, out: Path) -> dict:
    return {"DATA": str(corpus["data"]), "TOKENIZER": str(corpus["tokenizer"]), "OUT": str(out), "SMOKE": "1"}


def test_step_time_smoke_runs_each_config_and_tables_its_metrics(tmp_path, tiny_corpus, tiny_config):
    result = run_script(BENCH / "step_time.sh", {**corpus_env(tiny_corpus, tmp_path / "out"),
                                                 "CONFIGS": str(tiny_config), "SCOPES": "model layers"}, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = (tmp_path / "out").iterdir()
    assert re.fullmatch(r"step_time_cpu_\d{4}-\d\d-\d\d", folder.name)
    table = (folder / "step_time.md").read_text().splitlines()
    assert len(table) == 4  # header, rule, one row per compile scope
    for scope, row in zip(("model", "layers"), table[2:]):
        metrics = json.loads((folder / f"tiny_{scope}" / "metrics.json").read_text())
        assert metrics["config"]["train"]["compile_scope"] == scope
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == f"tiny_{scope}" and cells[3] == f"{metrics['steps']:,}"
        assert cells[8] == f"{metrics['val_bpb']:.4f}" and cells[9] == f"{metrics['artifact_bytes']:,}"


def test_export_widths_smoke_scores_each_export_of_one_training(tmp_path, tiny_corpus, tiny_config):
    env = {**corpus_env(tiny_corpus, tmp_path / "out"), "CONFIG": str(tiny_config), "EXPORTS": "8 6/16"}
    result = run_script(BENCH / "export_widths.sh", env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = (tmp_path / "out").iterdir()
    exports = sorted((folder / "tiny" / "exports").glob("*.json"))
    assert [p.stem for p in exports] == ["quant_bits_6__embedding_bits_16", "quant_bits_8__embedding_bits_0"]
    trained = json.loads((folder / "tiny" / "metrics.json").read_text())
    for path in exports:  # same weights: the round trip's cost is measured from the one pre-quant figure
        assert json.loads(path.read_text())["val_bpb_prequant"] == trained["val_bpb_prequant"]
    rows = (folder / "exports.md").read_text().splitlines()[2:]
    assert len(rows) == 3 and "as trained" in rows[0]
    # A second run keeps the trained weights and only exports again.
    again = run_script(BENCH / "export_widths.sh", {**env, "EXPORTS": "5"}, timeout=300)
    assert again.returncode == 0 and "already holds a trained run, kept" in again.stdout
    assert json.loads((folder / "tiny" / "metrics.json").read_text()) == trained


def test_ablation_smoke_runs_the_base_and_each_ablation_and_keeps_finished_runs(tmp_path, tiny_corpus, tiny_config):
    config = yaml.safe_load(tiny_config.read_text())
    config["train"] = {"average": "ema", "muon_weight_decay": 0.04, "adam_weight_decay": 0.04}
    tiny_config.write_text(yaml.safe_dump(config))
    (tmp_path / "tmp").mkdir()
    env = {**corpus_env(tiny_corpus, tmp_path / "out"), "CONFIG": str(tiny_config), "ONLY": "brotli ema weight_decay",
           "SETS": "train.eval_stride=0", "PARALLEL": "2", "TMPDIR": str(tmp_path / "tmp")}
    result = run_script(BENCH / "ablation.sh", env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    (folder,) = (tmp_path / "out").iterdir()
    for name in ("base", "ema", "weight_decay", "brotli"):  # each result line names its run
        assert re.search(rf"^\[ablation\.sh \+\d+s\] {name}: .*val_bpb .*round trip", result.stdout, re.M), result.stdout
    for name in ("base", "ema", "weight_decay"):  # two at a time, taking turns on the device
        log = (folder / name / "train.log").read_text()
        assert "for the device (" in log and "handed the device on" in log, log
    base = json.loads((folder / "base" / "metrics.json").read_text())
    ema = json.loads((folder / "ema" / "metrics.json").read_text())
    decay = json.loads((folder / "weight_decay" / "metrics.json").read_text())
    assert ema["config"]["train"]["average"] == "none" and base["config"]["train"]["average"] == "ema"
    assert decay["config"]["train"]["muon_weight_decay"] == 0 == decay["config"]["train"]["adam_weight_decay"]
    assert base["config"]["train"]["eval_stride"] == 0 == ema["config"]["train"]["eval_stride"]
    # An export-only ablation re-exports the base's weights instead of training again, once the base has finished
    # (listed first, it waited beside the base for its weights), taking its turn on the device too.
    assert (folder / "base" / "weights.pt").is_file() and not (folder / "brotli").exists()
    brotli = json.loads((folder / "brotli.json").read_text())
    assert (folder / "brotli.json").stat().st_mtime > (folder / "base" / "metrics.json").stat().st_mtime
    assert brotli["device_wait_s"] >= 0
    assert brotli["export"]["compressor"] == "zstd" and brotli["export"]["byte_shuffle"] is False
    assert brotli["val_bpb_prequant"] == pytest.approx(base["val_bpb_prequant"], abs=1e-9)
    text = (folder / "ablation.md").read_text()
    rows = [[c.strip() for c in r.strip("|").split("|")] for r in text.splitlines()[2:] if r.startswith("|")]
    assert [r[0] for r in rows] == ["nothing (base)", "brotli (base's weights re-exported)", "ema", "weight_decay"]
    assert "Runs took turns on the GPU (2 at once" in text
    assert rows[2][6] == f"{ema['val_bpb']:.4f}" and rows[2][7] == f"{ema['val_bpb'] - base['val_bpb']:+.4f}"
    assert rows[3][9] == f"{decay['artifact_bytes'] - base['artifact_bytes']:+,}"
    assert rows[1][2:4] == rows[0][2:4] and rows[1][6] == f"{brotli['val_bpb']:.4f}"
    assert rows[1][9] == f"{brotli['artifact_bytes'] - base['artifact_bytes']:+,}"
    # Another day, RESULT_DATE goes on with the folder: the finished runs and re-exports are kept.
    earlier = folder.with_name("ablation_cpu_2026-01-02")
    folder.rename(earlier)
    again = run_script(BENCH / "ablation.sh", {**env, "ONLY": "ema brotli", "PARALLEL": "1",
                                               "RESULT_DATE": "2026-01-02"}, timeout=600)
    assert again.returncode == 0 and again.stdout.count("finished earlier, kept") == 2
    assert "brotli: re-exported earlier, kept" in again.stdout and f"results in {earlier}" in again.stdout
    assert json.loads((earlier / "ema" / "metrics.json").read_text()) == ema
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [earlier.name]


@pytest.mark.parametrize("date, problem", [
    ("2026-01-03", "RESULT_DATE=2026-01-03: {out}/ablation_cpu_2026-01-03 is not a folder: name the date of a "
                   "ablation_cpu_<date> folder in OUT (same GPU model), or leave RESULT_DATE out"),
    ("yesterday", "RESULT_DATE=yesterday is not a date: use the YYYY-MM-DD of the results folder to go on with"),
])
def test_a_result_date_names_an_existing_folder(tmp_path, tiny_corpus, date, problem):
    out = tmp_path / "out"
    result = run_script(BENCH / "ablation.sh", {**corpus_env(tiny_corpus, out), "RESULT_DATE": date})
    assert result.returncode == 2
    assert result.stderr.strip() == f"ablation.sh: {problem.format(out=out)}"
    assert not out.exists() or not any(out.iterdir())


def test_ablation_refuses_an_unknown_name(tmp_path, tiny_corpus):
    result = run_script(BENCH / "ablation.sh", {**corpus_env(tiny_corpus, tmp_path / "out"), "ONLY": "ema dropout"})
    assert result.returncode == 2 and "ONLY has 'dropout'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_ablation_refuses_parallel_zero(tmp_path, tiny_corpus):
    result = run_script(BENCH / "ablation.sh", {**corpus_env(tiny_corpus, tmp_path / "out"), "PARALLEL": "0"})
    assert result.returncode == 2
    assert result.stderr.strip() == "ablation.sh: PARALLEL=0 is not a positive whole number of runs at once"


def _tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_tables", BENCH / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tables_reads_a_real_h200_run_as_benchmarks_md_reports_it(tmp_path):
    tables = _tables()
    run = tmp_path / "mlp3_loop56"
    run.mkdir()
    shutil.copy(RESULTS / "chip_comparison_h200_2026-12-04" / "candidate.metrics.json", run / "metrics.json")
    row = tables.run_row(run)
    assert row[:5] == ("mlp3_loop56", "NVIDIA H200", 1, "2,152", "83.7")
    assert row[6:10] == ("30.6%", "1.1023", "1.1051", "14,930,610")
    assert "no metrics.json" in tables.run_row(tmp_path / "unfinished")[1]


def test_tables_reads_real_h100_exports(tmp_path):
    tables = _tables()
    with tarfile.open(RESULTS / "exports_h100_2026-11-24" / "int8_baseline" / "exports.tgz") as tar:
        tar.extractall(tmp_path, filter="data")
    run = next(tmp_path.rglob("baseline/seed1338"))
    rows = {r[1]: r for r in tables.export_rows(run)}
    assert rows["export.quant_bits=6"][2:] == ("1.1454", "1.1181", "0.0273", "11,394,610", "yes")
    assert rows["export.embedding_bits=16"][5:] == ("16,208,583", "no")  # int8 + float16 embedding: over


def test_ablation_table_names_a_missing_reexport_and_its_log(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    shutil.copy(RESULTS / "chip_comparison_h200_2026-12-04" / "candidate.metrics.json", base / "metrics.json")
    table = _tables().ablation_table(base, [("gptq", "export.gptq=false", tmp_path / "gptq.json")])
    assert f"no gptq.json: see {tmp_path / 'gptq.log'}" in table.splitlines()[3]


def test_tables_reads_the_challenge_trainers_log(tmp_path):
    log = tmp_path / "reference.log"
    log.write_text("train_batch_tokens:524288 train_seq_len:1024 iterations:20000\n"
                   "step:200/20000 train_loss:3.1 train_time:70000ms step_avg:350.00ms\n"
                   "step:516/20000 val_loss:2.36 val_bpb:1.3974 train_time:180084ms step_avg:349.00ms\n"
                   "peak memory allocated: 10240 MiB reserved: 11000 MiB\n"
                   "Total submission size int8+zlib: 10281276 bytes\n"
                   "final_int8_zlib_roundtrip val_loss:2.40 val_bpb:1.4247 eval_time:9000ms\n")
    row = _tables().reference_row(log)
    assert row[3:6] == ("516", "349.0", f"{524288 / 0.349:,.0f}")
    assert row[7:10] == ("1.3974", "1.4247", "10,281,276") and row[11] == "10.00"


@pytest.mark.parametrize("name, bad, line", [
    ("BASELINE_CONFIG", "nowhere.yaml", "BASELINE_CONFIG=nowhere.yaml is not a file: name a run config YAML"),
    ("WIDEST_BITS", "2", "WIDEST_BITS=2: use 1 (widest bits that fit) or 0 (as configured)"),
    ("MIN_LEAD_BPB", "1%", "MIN_LEAD_BPB=1% is no val_bpb lead: pass a number below 1, e.g. 0.01"),
])
def test_search_then_rerun_names_a_bad_rerun_setting(name, bad, line, tmp_path):
    tokenizer = tmp_path / "tok.model"
    tokenizer.write_text("x")
    env = {"DATA": str(tmp_path), "TOKENIZER": str(tokenizer), "OUT": str(tmp_path / "out"), name: bad}
    result = run_script(BENCH / "search_then_rerun.sh", env)
    assert result.returncode == 2 and line in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_search_then_rerun_smoke_goes_on_from_the_study_elsewhere_then_reruns(tmp_path, tiny_corpus):
    env = {**corpus_env(tiny_corpus, tmp_path / "out"), "SEEDS": "0"}
    first = run_script(BENCH / "search_then_rerun.sh", env, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    (folder,) = (tmp_path / "out").iterdir()
    search = folder / "searches" / "smoke"
    assert (search / "search.json").is_file() and (folder / "report.md").is_file()
    assert not (folder / "rerun").exists()  # SEEDS=0: the search alone
    # The folder moves to another machine without Tune's own state: only the study can go on.
    for path in [*search.glob("tuner.pkl"), *search.glob("experiment_state*.json")]:
        path.unlink()
    again = run_script(BENCH / "search_then_rerun.sh", {**env, "FROM_STUDY": "1", "SEEDS": "2", "GRACE_S": "1",
                                                         "MIN_LEAD_BPB": "0.01"}, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    log = (folder / "search.log").read_text()
    assert "going on from the study" in log and "0 trial(s) left to launch" in log, log
    assert "first rung moved from 0.5 s to 1 s" in log  # GRACE_S reaches the resume
    assert json.loads((search / "search.json").read_text())["earlier_grace_s"] == [0.5]
    rerun = json.loads((folder / "rerun" / "rerun.json").read_text())
    assert rerun["seeds"] == [1338, 1339]
    assert len(rerun["candidate"]["runs"]) == 2 == len(rerun["baseline"]["runs"])
    assert rerun["welch"]["val_bpb_lead"]["margin"] == 0.01
