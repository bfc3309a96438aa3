"""Where a search lives: its folder, settings file, Optuna study database and report files."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sqlite3
from pathlib import Path

import optuna
import sqlalchemy

from search.settings import SearchSettings, SettingsError, is_uri

STORAGE_ENV = "RECURRENCE_STORAGE"
DEFAULT_STORAGE = "./runs"
SETTINGS_FILE = "search.json"
STUDY_FILE = "study.db"
REPORT_DIR = "report"


class UnknownSearchError(SettingsError):
    """No search of that name under the storage path."""


def default_storage() -> str:
    """$RECURRENCE_STORAGE if set, else ./runs (git-ignored)."""
    return os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def normalize_storage(storage: str | None) -> str:
    """Absolute local path or the URI unchanged."""
    storage = storage or default_storage()
    if is_uri(storage):
        return storage
    if storage.startswith("file://"):
        storage = storage[len("file://"):]
    return str(Path(storage).expanduser().resolve())


def search_dir(settings: SearchSettings) -> Path:
    """Local folder holding search.json, study.db and reports (Tune's experiment folder when storage is local)."""
    if is_uri(settings.storage):
        root = Path(settings.local_dir or DEFAULT_STORAGE).expanduser().resolve()
        return root / settings.name
    return Path(settings.storage) / settings.name


def experiment_path(settings: SearchSettings) -> str:
    """Tune's experiment path (local folder or URI) that Tuner.restore takes."""
    if is_uri(settings.storage):
        return settings.storage.rstrip("/") + "/" + settings.name
    return str(Path(settings.storage) / settings.name)


JOURNAL_SCHEME = "journal://"  # journal:///shared/path/study.log: an Optuna JournalStorage file


class StudyUnreadableError(SettingsError):
    """The study database (or journal) exists but cannot be read as this search's study."""


def study_url(settings: SearchSettings) -> str:
    """The study's storage URL: --storage-url if given, else SQLite study.db in the search folder (optuna-dashboard
    opens either; a journal:///PATH is opened by its PATH)."""
    return settings.storage_url or f"sqlite:///{search_dir(settings) / STUDY_FILE}"


def check_storage_url(url: str) -> str:
    """Return the URL if Optuna can use it (an RDB URL SQLAlchemy parses, or journal:///ABSOLUTE/PATH whose folder
    exists); else raise SettingsError naming the fix."""
    if not url:
        return url
    if url.startswith(JOURNAL_SCHEME):
        path = Path(url[len(JOURNAL_SCHEME):])
        if not path.is_absolute() or not path.parent.is_dir():
            raise SettingsError(f"--storage-url {url}: a journal needs an absolute path in an existing folder "
                                "(shared by every machine that opens the study), e.g. journal:///shared/study.log")
        return url
    try:
        sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise SettingsError(f"--storage-url {url}: not a database URL; pass sqlite:///PATH, a server URL such as "
                            "postgresql://user@host/db, or journal:///PATH") from None
    return url


def _sqlite_connection(path: str, wal: bool) -> sqlite3.Connection:
    # Every suggest/attr is one commit; with the default rollback journal each costs an fsync (~10 ms),
    # which made one size-gated suggestion take a second. WAL + synchronous=NORMAL survives a killed
    # process (only an OS crash can drop the last commits) and lets `status` read while the search writes.
    # WAL is a property of the file, set when the study is created: opening an existing one writes nothing.
    connection = sqlite3.connect(path, check_same_thread=False)
    if wal:
        connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _storage_for(url: str, create: bool) -> optuna.storages.BaseStorage:
    if url.startswith(JOURNAL_SCHEME):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        return JournalStorage(JournalFileBackend(url[len(JOURNAL_SCHEME):]))
    # Only a new study creates Optuna's tables: a damaged database is read, never written.
    options = {"skip_table_creation": not create}
    database = sqlalchemy.engine.make_url(url).database if url.startswith("sqlite:") else None
    if database and database != ":memory:":
        if not create and not Path(database).is_file():
            raise FileNotFoundError("the file does not exist")  # SQLite would create an empty one
        # The engine's connections come from _sqlite_connection (picklable: Tune pickles the searcher).
        options["engine_kwargs"] = {"creator": functools.partial(_sqlite_connection, database, create)}
    return optuna.storages.RDBStorage(url, **options)


def _unreadable(settings: SearchSettings, problem: str) -> StudyUnreadableError:
    return StudyUnreadableError(
        f"{study_url(settings)}: {problem}; restore it from a copy (a backup, or the search folder on the machine "
        f"that ran it), or pass the --storage/--storage-url it was run with; nothing was changed")


def study_storage(settings: SearchSettings, create: bool = True) -> optuna.storages.BaseStorage:
    """The storage object for the search's study (SQLite with fast, kill-safe settings by default); create=False
    opens an existing database without creating Optuna's tables in it."""
    search_dir(settings).mkdir(parents=True, exist_ok=True)
    try:
        return _storage_for(study_url(settings), create)
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, optuna.exceptions.StorageInternalError, OSError,
            ValueError) as exc:
        raise _unreadable(settings, f"cannot be read as an Optuna study database ({_first_line(exc)})") from None
    except RuntimeError as exc:  # Optuna's schema check names the `optuna storage upgrade` it needs
        raise _unreadable(settings, _first_line(exc)) from None


def read_trials(settings: SearchSettings, study: optuna.Study) -> optuna.Study:
    """The study after reading all its trials once, so a damaged database fails here with StudyUnreadableError."""
    try:
        study.get_trials(deepcopy=False)
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, optuna.exceptions.StorageInternalError, ValueError,
            KeyError) as exc:
        raise _unreadable(settings, f"its trials cannot be read ({_first_line(exc)})") from None
    return study


def load_study(settings: SearchSettings, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """The search's existing study (StudyUnreadableError, one line, if the database is damaged or holds none)."""
    storage = study_storage(settings, create=False)
    try:
        study = optuna.load_study(study_name=settings.name, storage=storage, sampler=sampler)
    except KeyError:
        raise _unreadable(settings, f"holds no study named {settings.name!r} (damaged, emptied or replaced)") from None
    except (sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, optuna.exceptions.StorageInternalError, ValueError) as exc:
        raise _unreadable(settings, f"cannot be read ({_first_line(exc)})") from None
    return read_trials(settings, study)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def report_dir(settings: SearchSettings) -> Path:
    """Folder for the report's CSV/MD/HTML/PNG/JSON files."""
    return search_dir(settings) / REPORT_DIR


def save_settings(settings: SearchSettings) -> Path:
    """Write search.json (creating the folder) and return its path."""
    folder = search_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(settings.to_json())
    tmp.replace(path)
    return path


def ensure_new(settings: SearchSettings) -> None:
    """Refuse to start a search over an existing one of the same name."""
    folder = search_dir(settings)
    if (folder / SETTINGS_FILE).exists():
        raise SettingsError(
            f"--name {settings.name}: a search of that name already exists at {folder}; "
            f"continue it with `python -m search resume {settings.name}` or pick another name"
        )


def list_searches(storage: str) -> list[str]:
    """Names of searches (folders with a search.json) under a local storage path."""
    root = Path(storage)
    if not root.is_dir():
        return []
    return sorted(p.parent.name for p in root.glob(f"*/{SETTINGS_FILE}"))


def load_settings(name: str, storage: str | None = None) -> SearchSettings:
    """Read a search's settings by name, or raise naming the searches that do exist."""
    root = normalize_storage(storage)
    local_root = root if not is_uri(root) else str(Path(DEFAULT_STORAGE).resolve())
    path = Path(local_root) / name / SETTINGS_FILE
    if not path.is_file():
        existing = list_searches(local_root)
        hint = f"existing searches: {', '.join(existing)}" if existing else "there are none yet"
        raise UnknownSearchError(
            f"no search named {name!r} under {local_root} ({hint}); "
            f"check the name, or pass --storage (or set ${STORAGE_ENV}) to where it was run"
        )
    try:
        text = path.read_text()
        if not isinstance(json.loads(text), dict):
            raise TypeError("not a JSON object")
        settings = SearchSettings.from_json(text, where=str(path))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, AttributeError) as exc:
        raise SettingsError(
            f"{path}: damaged, not the settings of a search ({type(exc).__name__}: {exc}); restore search.json from "
            "a copy (a backup, or the search folder on the machine that ran it); nothing was changed") from None
    if not is_uri(settings.storage) and not is_uri(root) and Path(settings.storage) != Path(root):
        # The folder was copied or moved (e.g. fetched from a cluster's head node): it is the search now.
        settings = dataclasses.replace(settings, storage=root)
    return settings
