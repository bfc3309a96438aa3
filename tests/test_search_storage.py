"""Where the study lives (--storage-url: SQLite, a journal file) and what a damaged study or search.json does: one
line naming the file and the fix, exit 2, the file left as it was."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search import store
from search.cli import build_parser, settings_from_args
from search.settings import SearchSettings, SettingsError
from search.tune.searcher import RecurrenceSearcher, open_study
from tests.search_fixtures import cli_env, tiny_settings, write_space

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "search", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=cli_env())


def _search(tmp_path: Path, name: str, **changes) -> SearchSettings:
    """A saved search with one finished trial, filled in through the real searcher."""
    paths = {"data": tmp_path / "data", "tokenizer": tmp_path / "tok.model"}  # never read: no trial trains here
    settings = tiny_settings(tmp_path / "runs", paths, write_space(tmp_path), name, **changes)
    store.save_settings(settings)
    searcher = RecurrenceSearcher(settings)
    number = searcher.suggest("a")["optuna_number"]
    searcher.on_trial_complete("a", {"final": True, "val_bpb": 1.3, "artifact_bytes": 40_000})
    assert {t.number: t.state for t in open_study(settings).get_trials()}[number] == TrialState.COMPLETE
    return settings


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_a_study_elsewhere_is_read_back_from_search_json(tmp_path, kind):
    shared = tmp_path / "shared"
    shared.mkdir()
    url = f"journal://{shared / 'study.log'}" if kind == "journal" else f"sqlite:///{shared / 'elsewhere.db'}"
    settings = _search(tmp_path, f"away-{kind}", storage_url=url)
    assert (shared / ("study.log" if kind == "journal" else "elsewhere.db")).stat().st_size > 0
    assert not (store.search_dir(settings) / store.STUDY_FILE).exists()  # nothing in the default place
    loaded = store.load_settings(settings.name, settings.storage)
    assert loaded.storage_url == url and store.study_url(loaded) == url
    out = _cli("status", settings.name, "--storage", settings.storage)
    assert out.returncode == 0 and "best: #" in out.stdout, out.stdout + out.stderr
    out = _cli("report", settings.name, "--storage", settings.storage)
    assert out.returncode == 0 and '"complete": 1' in out.stdout, out.stderr


def test_storage_urls_are_checked_before_anything_starts(tmp_path):
    assert store.check_storage_url("") == ""
    assert store.check_storage_url("postgresql://user@db.example/search") == "postgresql://user@db.example/search"
    assert store.check_storage_url(f"journal://{tmp_path}/s.log") == f"journal://{tmp_path}/s.log"
    with pytest.raises(SettingsError, match="--storage-url not a url: not a database URL"):
        store.check_storage_url("not a url")
    with pytest.raises(SettingsError, match="absolute path in an existing folder"):
        store.check_storage_url("journal://relative/s.log")
    with pytest.raises(SettingsError, match="absolute path in an existing folder"):
        store.check_storage_url(f"journal://{tmp_path}/missing/s.log")
    for path in ("space.yaml", "tok.model"):
        (tmp_path / path).write_text("")
    args = build_parser().parse_args([
        "run", "--name", "s1", "--space", str(tmp_path / "space.yaml"), "--data", str(tmp_path), "--tokenizer",
        str(tmp_path / "tok.model"), "--storage", str(tmp_path), "--storage-url", f"journal://{tmp_path}/s.log"])
    settings = settings_from_args(args)
    assert settings.storage_url == f"journal://{tmp_path}/s.log"
    assert SearchSettings.from_json(settings.to_json()).storage_url == settings.storage_url


def _one_line_error(out: subprocess.CompletedProcess, *needles: str) -> None:
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "emptied"])
def test_a_damaged_study_database_is_one_line_and_left_alone(tmp_path, damage):
    settings = _search(tmp_path, f"broken-{damage}")
    db = store.search_dir(settings) / store.STUDY_FILE
    for leftover in db.parent.glob("study.db-*"):  # WAL files of the closed connections
        leftover.unlink()
    data = db.read_bytes()
    broken = {"garbage": b"this is not a database" * 100, "truncated": data[:len(data) // 3], "emptied": b""}[damage]
    db.write_bytes(broken)
    for command in ("status", "report") if damage == "garbage" else ("status",):
        out = _cli(command, settings.name, "--storage", settings.storage)
        # SQLite opens a truncated file as far as it goes: a table, the study's row or a page is missing.
        _one_line_error(out, str(db), "restore it from a copy", "nothing was changed")
        assert "cannot be read" in out.stderr or "holds no study named" in out.stderr
    assert db.read_bytes() == broken


def test_a_damaged_search_json_is_one_line_and_left_alone(tmp_path):
    settings = _search(tmp_path, "bad-json")
    path = store.search_dir(settings) / store.SETTINGS_FILE
    text = path.read_text()
    for broken, commands in ((text[: len(text) // 2], ("status", "resume")), ("[1, 2]", ("report",))):
        path.write_text(broken)
        for command in commands:
            out = _cli(command, settings.name, "--storage", settings.storage)
            _one_line_error(out, str(path), "damaged", "restore search.json from a copy")
        assert path.read_text() == broken


def test_optuna_reads_the_default_study_while_a_search_would_write_it(tmp_path):
    # WAL mode (set by the storage's SQLite connections) lets a reader open the study while it is written.
    settings = _search(tmp_path, "wal")
    url = store.study_url(settings)
    import sqlite3

    db = url[len("sqlite:///"):]
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert len(optuna.load_study(study_name=settings.name, storage=url).get_trials()) >= 1


def test_a_real_search_keeps_its_study_in_a_journal(tmp_path, tiny_corpus):
    from tests.search_fixtures import run_local_search

    journal = tmp_path / "shared" / "study.log"
    journal.parent.mkdir()
    settings = tiny_settings(tmp_path / "runs", tiny_corpus, write_space(tmp_path), "journal-run", trials=3,
                             early_stopping="none", storage_url=f"journal://{journal}")
    run_local_search(settings)
    trials = optuna.load_study(study_name=settings.name, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal)))).get_trials()
    launched = [t for t in trials if t.user_attrs.get("tune_trial_id")]
    assert len(launched) == 3 and all(t.state == TrialState.COMPLETE for t in launched)
    assert not (store.search_dir(settings) / store.STUDY_FILE).exists()


def test_a_missing_study_database_is_named_and_not_created(tmp_path, capsys):
    from search.cli import main

    settings = _search(tmp_path, "gone")
    db = store.search_dir(settings) / store.STUDY_FILE
    for path in db.parent.glob("study.db*"):
        path.unlink()
    assert main(["status", settings.name, "--storage", settings.storage]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(db) in err[0] and "the file does not exist" in err[0]
    assert not db.exists()
