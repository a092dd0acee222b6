"""kdbench as a wheel, the way a cluster's shared environment installs it (``pip install .``, not editable): the
suites ship as package data, the method plugins install under kdbench's own namespace (``kdbench.methods``, never
a generic top-level ``methods``), and ``python -m kdbench run smoke --dry-run`` works from an empty folder of a
fresh virtualenv. The fresh virtualenv borrows torch and the other dependencies from the project's environment (a
``.pth`` line; installing torch again would take gigabytes), never the project's own editable kdbench."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _packages_in_tree() -> set[str]:
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "kdbench").rglob("__init__.py")}
    found |= {".".join(("kdbench", *p.parent.relative_to(ROOT).parts)) for p in (ROOT / "methods").rglob("__init__.py")}
    return found | {"kdbench.suites"}


def test_the_wheel_names_every_package_of_the_tree() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(settings["packages"]) == _packages_in_tree()
    assert settings["package-dir"] == {"kdbench.methods": "methods", "kdbench.suites": "suites"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                            "-q", "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("kdbench-*.whl")
    return path


def test_the_wheel_carries_the_suites_and_the_methods_under_kdbench(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"kdbench/suites/{p.name}" for p in (ROOT / "suites").glob("*.yaml")}
    assert shipped and shipped <= names
    assert {"kdbench/methods/kd.py", "kdbench/methods/gendd/head.py", "kdbench/reference/recipes.csv"} <= names
    assert not any(name.startswith(("methods/", "suites/", "tests/")) for name in names)


def test_a_fresh_virtualenv_runs_the_smoke_dry_run_from_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    env_dir = tmp_path / "fresh venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True, timeout=300)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # torch, timm, pandas, ... from the project's environment; its editable kdbench is not on this path (a .pth
    # line adds a folder without reading the .pth files inside it)
    deps = [p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]
    (site / "borrowed_dependencies.pth").write_text("\n".join(deps) + "\n")
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                               capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KDBENCH_SUITES", "KDBENCH_METHODS")}

    def kdbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(python), "-m", "kdbench", *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=300)

    where = subprocess.run([str(python), "-c", "import kdbench, kdbench.methods; print(kdbench.__file__); "
                            "import importlib.util; print(importlib.util.find_spec('methods'))"],
                           cwd=empty, env=env, capture_output=True, text=True, timeout=120)
    kdbench_file, top_level_methods = where.stdout.splitlines()
    assert Path(kdbench_file).is_relative_to(site) and top_level_methods == "None", where.stdout + where.stderr
    dry = kdbench("run", "smoke", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "suite 'smoke'" in dry.stdout and "kdb_cnn_base -> kdb_cnn_nano" in dry.stdout
    listed = kdbench("list", "suites")
    assert "generative_smoke" in listed.stdout and "imagenet_full" in listed.stdout, listed.stdout + listed.stderr
    methods = kdbench("list", "methods")
    assert all(name in methods.stdout for name in ("gendd", "diffkd", "mgd", "crd")), methods.stdout
    assert not list(empty.iterdir()), "a dry run writes nothing"
