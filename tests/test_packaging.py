"""The package installs (editable and as a wheel) and its console script captions a photo
from any folder, with the shipped checkpoint found wherever the package went."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from tests.conftest import ROOT, flickr_sample, shipped


def _venv(path):
    """A fresh virtual environment that sees this one's packages (torch and the rest) through
    a .pth file, so the test installs only the project itself, offline."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    site = next(path.glob("lib/python*/site-packages"))
    (site / "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path / "bin"


def _pip(bin_dir, *args, cwd):
    # pip runs as a module of the outer environment, installing into the new one
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(bin_dir / "python"), "install", "-q",
                           "--no-deps", "--no-build-isolation", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def _caption(bin_dir, photo, cwd):
    env = _clean_env()
    result = subprocess.run([str(bin_dir / "captioner"), "caption", str(photo), "--json", "--beam-size", "1"],
                            cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[0])


def _clean_env() -> dict:
    """The environment without what would point the installed package back at the clone."""
    return {k: v for k, v in os.environ.items() if k not in ("CAPTIONER_CHECKPOINTS", "PYTHONPATH")}


@pytest.mark.parametrize("editable", [True, False], ids=["pip install -e", "pip install wheel"])
def test_installed_console_script_captions_from_another_folder(tmp_path, editable):
    shipped("captioner.safetensors")
    photo = flickr_sample(1)[0][0]
    bin_dir = _venv(tmp_path / "venv")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if editable:
        result = _pip(bin_dir, "-e", str(ROOT), cwd=elsewhere)
    else:  # built from a copy of what git tracks, as from a fresh clone (setuptools writes build/ in place)
        source = tmp_path / "clone"
        tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
        for name in filter(None, tracked.decode().split("\0")):
            if (ROOT / name).is_file():
                (source / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, source / name)
        build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                                "-w", str(tmp_path / "wheels"), str(source)], capture_output=True, text=True,
                               timeout=300, cwd=elsewhere)
        assert build.returncode == 0, build.stderr[-2000:]
        result = _pip(bin_dir, *map(str, (tmp_path / "wheels").glob("captioner-*.whl")), cwd=elsewhere)
    assert result.returncode == 0, result.stderr[-2000:]
    line = _caption(bin_dir, photo, cwd=elsewhere)
    assert line["caption"] and line["words"] and "objects" in line and "familiarity" in line
    if not editable:  # the wheel carries the weights: nothing may come from the clone
        where = subprocess.run([str(bin_dir / "python"), "-c", "import captioner.model as m; print(m.CHECKPOINTS)"],
                               cwd=elsewhere, env=_clean_env(), capture_output=True, text=True,
                               check=True).stdout.strip()
        assert not where.startswith(str(ROOT)) and where.endswith("share/captioner/checkpoints"), where
