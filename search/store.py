"""Where a search lives: its folder, settings file, Optuna study database and report files."""
from __future__ import annotations

import dataclasses
import os
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


def study_url(settings: SearchSettings) -> str:
    """SQLAlchemy URL of the study database (optuna-dashboard opens it directly)."""
    return f"sqlite:///{search_dir(settings) / STUDY_FILE}"


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # Every suggest/attr is one commit; with the default rollback journal each costs an fsync (~10 ms),
    # which made one size-gated suggestion take a second. WAL + synchronous=NORMAL survives a killed
    # process (only an OS crash can drop the last commits) and lets `status` read while the search writes.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class StudyStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage with fast, kill-safe SQLite settings (kept across pickling)."""

    def __init__(self, url: str):
        super().__init__(url)
        self._tune_sqlite()

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._tune_sqlite()

    def _tune_sqlite(self) -> None:
        if self.engine.dialect.name == "sqlite":
            sqlalchemy.event.listen(self.engine, "connect", _sqlite_pragmas)
            self.engine.dispose()  # connections opened during setup predate the listener


def study_storage(settings: SearchSettings) -> StudyStorage:
    """The storage object for the search's study database."""
    search_dir(settings).mkdir(parents=True, exist_ok=True)
    return StudyStorage(study_url(settings))


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
    settings = SearchSettings.from_json(path.read_text(), where=str(path))
    if not is_uri(settings.storage) and not is_uri(root) and Path(settings.storage) != Path(root):
        # The folder was copied or moved (e.g. fetched from a cluster's head node): it is the search now.
        settings = dataclasses.replace(settings, storage=root)
    return settings
