"""A non-editable install works on its own: no source checkout, features, models, flows and
templates come from the package, and `wobble demo` runs from any folder."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_non_editable_install_runs_the_demo_from_another_folder(tmp_path):
    # A fresh environment whose dependencies come from this one (a .pth line: no downloads), with
    # wobble itself built and installed as a wheel, not linked to the checkout.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    target = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    # (a path in a .pth file is added as it is: the .pth files inside it, such as this checkout's
    # editable install, are not read)
    (Path(target) / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                            "--target", target, str(ROOT)], capture_output=True, text=True, env=clean,
                           cwd=tmp_path, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    where = subprocess.run([str(py), "-c", "import wobble, wobble.flows.weekly; print(wobble.__file__)"],
                           capture_output=True, text=True, env=clean, cwd=tmp_path)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).is_relative_to(Path(target)), where.stdout  # not the checkout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    wobble = [str(py), "-m", "wobble"]
    demo = subprocess.run([*wobble, "demo", "--persons", "2000", "--seed", "3", "--workdir", "demo"],
                          capture_output=True, text=True, cwd=elsewhere, timeout=900,
                          env={**clean, "WOBBLE_PSEUDONYM_KEY": "packaging-test-key-0123"})
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert list((elsewhere / "demo" / "outputs" / "lists").glob("*/T01.html"))
    listing = subprocess.run([*wobble, "features", "list", "--json"], capture_output=True, text=True,
                             cwd=elsewhere, env=clean)
    assert listing.returncode == 0 and '"contacts_365d"' in listing.stdout
    assert sys.prefix != str(env_dir)
