"""Which driver process runs a search, and whether it is still alive.

A running driver writes driver.json next to the study (host, pid, start, a heartbeat every HEARTBEAT_S) and marks
it ended when it stops. A driver killed outright (out of memory, SIGKILL, a lost head node) cannot mark its trials,
so `status`, `report` and `resume` check the record: a driver whose process is gone (same host) or whose heartbeat
is older than STALE_S (any host) is dead, and the trials it left running are marked interrupted, resumable.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from search import store
from search.settings import SearchSettings, SettingsError
from search.vocabulary import RUNNING, STATUS, TUNE_ID

DRIVER_FILE = "driver.json"
HEARTBEAT_S = 15.0
STALE_S = 120.0


def record_path(settings: SearchSettings) -> Path:
    return store.search_dir(settings) / DRIVER_FILE


def _write(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def read_record(settings: SearchSettings) -> dict | None:
    """The last driver's record, or None (never recorded, or unreadable)."""
    try:
        return json.loads(record_path(settings).read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process of that pid
        return True
    return True


def gone_reason(record: dict | None, now: float | None = None) -> str | None:
    """Why the recorded driver is dead (None: it ended cleanly, is alive, or nothing was recorded)."""
    if not record or record.get("ended_at"):
        return None
    now = time.time() if now is None else now
    who = f"pid {record.get('pid')} on {record.get('host')}"
    if record.get("host") == socket.gethostname() and not _pid_alive(int(record.get("pid", -1))):
        return f"its driver ({who}) died without closing the search"
    silent_s = now - float(record.get("heartbeat_at", 0))
    if silent_s > STALE_S:
        return f"its driver ({who}) stopped answering {silent_s:.0f} s ago"
    return None


@contextlib.contextmanager
def driving(settings: SearchSettings):
    """Record this process as the search's driver while the block runs (heartbeat thread, ended when it leaves)."""
    path = record_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.time(), "heartbeat_at": time.time()}
    _write(path, record)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            record["heartbeat_at"] = time.time()
            with contextlib.suppress(OSError):
                _write(path, record)

    thread = threading.Thread(target=beat, name="driver-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        record["ended_at"] = time.time()
        with contextlib.suppress(OSError):
            _write(path, record)


def refuse_if_alive(settings: SearchSettings) -> None:
    """Raise SettingsError when another live driver runs this search (two drivers would launch its trials twice)."""
    record = read_record(settings)
    if record and not record.get("ended_at") and gone_reason(record) is None and record.get("pid") != os.getpid():
        raise SettingsError(
            f"search {settings.name} is still driven by pid {record['pid']} on {record['host']} (heartbeat "
            f"{time.time() - float(record['heartbeat_at']):.0f} s ago); stop it first, or watch it with "
            f"`python -m search status {settings.name}`")


def close_orphans(settings: SearchSettings) -> int:
    """If the search's driver died, mark the trials it left running as interrupted (resumable); return how many."""
    from search.tune.searcher import mark_interrupted, open_study

    if not (store.search_dir(settings) / store.STUDY_FILE).is_file():
        return 0
    reason = gone_reason(read_record(settings))
    if reason is None:
        return 0
    running = {t.user_attrs.get(TUNE_ID) for t in open_study(settings).get_trials(deepcopy=False)
               if t.user_attrs.get(STATUS) == RUNNING and t.user_attrs.get(TUNE_ID)}
    if not running:
        return 0
    return mark_interrupted(settings, f"{reason}; `python -m search resume {settings.name}` continues it from its "
                                      "last checkpoint", running)
