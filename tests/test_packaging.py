"""A built wheel carries conf/ and experiments/ and composes from any working directory."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from tests.conftest import REPO


def test_wheel_ships_configs_and_runs_from_them(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "dist").glob("vlmexp-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert "vlmexp/conf/config.yaml" in names and "vlmexp/conf/model/qwen7b.yaml" in names
    presets = {p.name for p in (REPO / "experiments").glob("*.yaml")}
    assert {f"vlmexp/experiments/{name}" for name in presets} <= names
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = ("import vlmexp.paths as p; print(p.conf_dir()); print(p.experiments_dir())")
    env = {"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=elsewhere, env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [str(tmp_path / "site" / "vlmexp" / "conf"), str(tmp_path / "site" / "vlmexp" / "experiments")]
    shown = subprocess.run([sys.executable, "-m", "vlmexp", "--cfg", "job", "model=qwen7b"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert "Qwen/Qwen2.5-VL-7B-Instruct" in shown.stdout


def _requirement_names(lines) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    return {canonicalize_name(Requirement(line).name) for line in lines}


def test_constraints_file_pins_every_dependency():
    """constraints.txt (what the README's install uses) pins each dependency pyproject.toml names,
    for every Python the project supports; refreshed with the command in its header."""
    import re

    import pytest
    from packaging.markers import Marker
    from packaging.utils import canonicalize_name

    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _requirement_names(project["dependencies"]) | _requirement_names(
        dep for deps in project["optional-dependencies"].values() for dep in deps)
    text = (REPO / "constraints.txt").read_text()
    assert "uv pip compile pyproject.toml" in text.splitlines()[1]
    pins: dict[str, list[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9_.\-]+)==([^ ;]+)\s*(?:;\s*(.*))?$", line)
        if match:
            pins.setdefault(canonicalize_name(match[1]), []).append(match[3] or "")
    for python in ("3.10", "3.11", "3.12"):
        env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
               "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "os_name": "posix"}
        pinned = {name for name, markers in pins.items() if any(not m or Marker(m).evaluate(env) for m in markers)}
        assert not wanted - pinned, f"Python {python}: constraints.txt does not pin {sorted(wanted - pinned)}"
