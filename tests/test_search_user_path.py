"""The README's Quickstart as a new user runs it: the smoke search, then status, report and rerun, in a fresh folder
with a fresh home (no smoke corpus cached, no Ray cluster running). Each command's seconds are printed; how long the
path takes is a benchmark's question, not this test's (a busy machine is slower, and that is no defect)."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HANG_S = 1800.0  # a command this slow is hung, not slow


def quickstart_commands() -> tuple[list[str], list[str]]:
    """(the first command's `python -m search` parts, the `python -m search` lines of the block after it), read
    from the README's Quickstart section as written."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Quickstart"):]
    section = section[:section.index("\n## ", 3)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    first = blocks[0].replace("\\\n", " ")
    setup = [part.strip() for part in first.split("&&")]
    assert setup[0].startswith("pip install") and setup[1].startswith("pip install -e")  # done by the test's env
    main = [part for part in setup if part.startswith("python -m search")]
    follow = [line.strip() for line in blocks[1].splitlines() if line.strip().startswith("python -m search")]
    return main, follow


def test_readme_quickstart_parses_to_a_smoke_search_and_its_follow_ups():
    main, follow = quickstart_commands()
    assert main == ["python -m search run --smoke --name first"]
    assert [shlex.split(c)[3] for c in follow] == ["status", "report", "rerun"]


def test_readme_quickstart_runs_on_a_fresh_machine():
    main, follow = quickstart_commands()
    root = Path(tempfile.mkdtemp(prefix="rsqs", dir="/tmp"))  # short: Ray's socket paths live under TMPDIR
    try:
        work, home, tmp = root / "work", root / "home", root / "tmp"
        for folder in (work, home, tmp):
            folder.mkdir()
        # A fresh machine: an empty home (the smoke corpus is built), no Ray cluster to join (RAY_ADDRESS=local:
        # Ray's own lookup would find clusters that others run on a shared machine), its own temp folder, and this
        # checkout importable as `pip install -e .` makes it.
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "TMPDIR": str(tmp), "PYTHONPATH": str(REPO),
               "LANG": "C.UTF-8", "RAY_ADDRESS": "local"}
        timings = []
        start = time.monotonic()
        for command in main + follow:
            argv = [sys.executable if a == "python" else a for a in shlex.split(command)]
            began = time.monotonic()
            proc = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=HANG_S)
            timings.append((command, time.monotonic() - began))
            assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            if " run " in command:
                assert "building the smoke data set" in proc.stdout and "data checked on" in proc.stdout
                assert re.search(r"CPU trials: up to [0-9.]+ GB each .* \d+ at once", proc.stdout)
        total = time.monotonic() - start
        search = work / "runs" / "first"
        assert (home / ".cache" / "recurrence-search" / "smoke" / "v1" / "smoke.json").is_file()
        summary = json.loads((search / "report" / "summary.json").read_text())
        assert summary["counts"]["complete"] >= 1
        assert (search / "report" / "frontier.png").is_file()
        rerun = json.loads(next(search.glob("rerun_trial*/rerun.json")).read_text())
        assert rerun["smoke"] is True and len(rerun["candidate"]["runs"]) == 2
        assert len(rerun["baseline"]["runs"]) == 2
        print("\n" + "\n".join(f"  {s:6.1f} s  {c}" for c, s in timings) + f"\n  {total:6.1f} s  whole path "
              f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
