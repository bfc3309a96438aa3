"""benchmarks/device/flashpack_install.sh: a wheel split in two parts (carried by two calls) is joined and installed
offline with the part-1 wheels, or the missing part is named."""
from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "device" / "flashpack_install.sh"
PATH = f"{Path(sys.executable).parent}:/usr/bin:/bin"  # python3: this interpreter's, with pip


def make_wheel(folder: Path, name: str, files: dict[str, str]) -> Path:
    """A minimal pure-Python wheel of `name` 1.0 holding files (path -> text), with a RECORD pip accepts."""
    dist = f"{name}-1.0.dist-info"
    contents = {**files,
                f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
                f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = []
    for path, text in contents.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    wheel = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in contents.items():
            zf.writestr(path, text)
        zf.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


def flashpack(root: Path) -> None:
    """.flashpack as make_device_packs.sh lays it out: the big wheel split into cu13.aa (part1) and cu13.ab (part2)."""
    part1, part2 = root / ".flashpack" / "part1", root / ".flashpack" / "part2"
    part1.mkdir(parents=True)
    part2.mkdir()
    cute = "import cutlass\nfrom flash_attn_cu13 import kernel as flash_attn_func\n"
    make_wheel(part1, "flash_attn", {"flash_attn/__init__.py": "", "flash_attn/cute/__init__.py": cute})
    # As nvidia-cutlass-dsl: its `cutlass` sits in a subfolder that a .pth file puts on sys.path.
    pth = "import sys, os, cutlass_dsl; sys.path.insert(0, os.path.join(cutlass_dsl.__path__[0], 'dsl_packages'))\n"
    make_wheel(part1, "cutlass_dsl", {"cutlass_dsl/__init__.py": "", "cutlass_dsl_packages.pth": pth,
                                      "cutlass_dsl/dsl_packages/cutlass/__init__.py": ""})
    module = "def kernel():\n    return 1\n" + "# pad\n" * 4000  # the split falls inside its bytes
    big = make_wheel(root, "flash_attn_cu13", {"flash_attn_cu13.py": module})
    data = big.read_bytes()
    (part1 / "cu13.aa").write_bytes(data[: len(data) // 2])
    (part2 / "cu13.ab").write_bytes(data[len(data) // 2:])
    (part2 / "wheel_name.txt").write_text(big.name + "\n")
    big.unlink()


def test_both_parts_install_offline_and_import(tmp_path):
    flashpack(tmp_path)
    site = tmp_path / "site"
    run = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env={"PATH": PATH, "FLASHPACK_SITE": str(site),
                         "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "flash-attn-4 imports"
    assert (site / "flash_attn_cu13.py").read_text().startswith("def kernel():")  # the joined wheel, intact
    assert (site / "pythonpath.txt").read_text().strip() == str(site / "cutlass_dsl" / "dsl_packages")


@pytest.mark.skipif(Path("/tmp/flashpack_part1").exists(), reason="an earlier call left part 1 in /tmp/flashpack_part1")
def test_a_missing_part1_is_named_with_the_fix(tmp_path):
    flashpack(tmp_path)
    shutil.rmtree(tmp_path / ".flashpack" / "part1")
    run = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, env={"PATH": PATH,
                         "FLASHPACK_SITE": str(tmp_path / "site")}, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip() == ("install.sh: part1 not found (carry .flashpack/part1, or copy it to "
                                  "/tmp/flashpack_part1 in an earlier call)")
    assert not (tmp_path / "site").exists()
