"""A wheel of the project holds what the code reads from beside itself: the configs and the sbatch
template (an editable install reads them from the clone; a wheel must carry them)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

from tests.conftest import REPO


def source_copy(destination):
    """The project's files as git sees them (tracked, and new ones not ignored), without any build
    folder a previous build left in the clone (setuptools would reuse it)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def test_a_wheel_installed_elsewhere_finds_its_configs_and_sbatch_template(tmp_path):
    source = source_copy(tmp_path / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("visage-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"configs/schema.py", "configs/embedder/triplet.yaml", "configs/recognizer/arcface.yaml",
            "configs/recognizer/cosface.yaml", "configs/cluster/local.yaml",
            "slurm/templates/train.sbatch"} <= names
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in names)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("from trainers.config import CONFIG_DIR, load_config; from slurm.render import TEMPLATE; "
             "cfg = load_config('embedder/triplet.yaml'); "
             "print(CONFIG_DIR, TEMPLATE.is_file(), cfg.task)")
    # run from an empty folder, the wheel's copy first on the path: nothing can come from the clone
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr[-2000:]
    config_dir, template_found, task = result.stdout.split()
    assert config_dir == str(site / "configs") and template_found == "True" and task == "embedder"
