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
