"""The console scripts of pyproject.toml (rsearch, rtrain, rspaces): each names a main that returns an exit status,
and, where the project is installed from this tree (`pip install -e .`, as .ci/run does), each runs --help."""
from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = {"rsearch": "search.cli:main", "rtrain": "trainer.cli:main", "rspaces": "spaces.cli:main"}


def test_pyproject_declares_the_three_scripts():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert declared == SCRIPTS


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_each_script_is_a_main_that_returns_an_exit_status(name):
    module, _, attr = SCRIPTS[name].partition(":")
    main = getattr(importlib.import_module(module), attr)
    params = inspect.signature(main).parameters
    # A console script calls main() with no arguments and passes its return value to sys.exit.
    assert list(params) == ["argv"] and params["argv"].default is None
    assert inspect.signature(main).return_annotation in (int, "int")
    # As the generated wrapper runs it: argv from sys.argv, the return value to sys.exit.
    code = f"import sys; sys.argv = [{name!r}, '--help']; from {module} import {attr}; sys.exit({attr}())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: "), out.stderr
    code = f"import sys; sys.argv = [{name!r}, 'no-such-command']; from {module} import {attr}; sys.exit({attr}())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "invalid choice" in out.stderr


def _installed_here() -> importlib.metadata.Distribution | None:
    """The installed recurrence-search distribution if pip installed it from this tree (its direct_url.json)."""
    for dist in importlib.metadata.distributions():
        if dist.metadata["Name"] != "recurrence-search" or not dist.read_text("direct_url.json"):
            continue  # another project, or the build's egg-info left in a source tree
        url = json.loads(dist.read_text("direct_url.json")).get("url", "")
        if url.startswith("file://") and Path(url.removeprefix("file://")).resolve() == REPO:
            return dist
    return None


@pytest.mark.skipif(_installed_here() is None,
                    reason="recurrence-search is not installed from this tree; `pip install -e .` here to test its "
                           "console scripts")
@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_installed_scripts_run_help(name):
    entry = {e.name: e.value for e in _installed_here().entry_points if e.group == "console_scripts"}
    assert entry.get(name) == SCRIPTS[name]
    script = Path(sysconfig.get_path("scripts")) / name
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("usage: "), out.stderr
