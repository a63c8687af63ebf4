"""
The README's install, ``pip install -e .``, gives a working ``twistd rtunnel`` (issue
#14): with setuptools' default editable mode the packages used to be mapped through an
import hook that Twisted's plugin loader cannot see ("Unknown command: rtunnel"). And a
wheel carries every package, ``rtunnel.operations`` and the plugin included.

Builds a fresh virtual environment from a copy of the checkout (a minute or so; pip
fetches the build backend as it would for a user). rtunnel's dependencies come from the
test run's own environment through a ``.pth`` file, so nothing else is downloaded.
"""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
TWISTD = "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"


def _copy_checkout(target: Path) -> Path:
    project = target / "project"
    ignore = shutil.ignore_patterns(
        ".git", ".venv", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", "dropin.cache"
    )
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "rtunnel", "twisted"):
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, project / name, ignore=ignore)
        else:
            shutil.copy2(source, project / name)
    return project


def _run(*argv: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_pip_install_editable_gives_a_working_twistd_plugin(tmp_path: Path) -> None:
    project = _copy_checkout(tmp_path)
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    new_site = _run(python, "-c", "import site; print(site.getsitepackages()[0])", cwd=tmp_path)
    (Path(new_site.strip()) / "zz_test_dependencies.pth").write_text(
        "\n".join(site.getsitepackages()) + "\n"
    )
    # The README's command (with --no-deps: the dependencies are already there).
    _run(python, "-m", "pip", "install", "--quiet", "--no-deps", "-e", project, cwd=tmp_path)

    # Anywhere but the checkout, which would put it on sys.path by itself.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    help_text = _run(python, "-c", TWISTD, "rtunnel", "--help", cwd=elsewhere)
    assert "Usage: twistd [options] rtunnel [options] [user@]host | --config FILE" in help_text
    listing = _run(python, "-c", TWISTD, "--help", cwd=elsewhere)
    assert [line.split()[0] for line in listing.splitlines() if " rtunnel " in f" {line} "] == [
        "rtunnel"
    ]
    # The installed rtunnel is the copy's.
    where = _run(python, "-c", "import rtunnel; print(rtunnel.__file__)", cwd=elsewhere)
    assert Path(where.strip()) == project / "rtunnel" / "__init__.py"


def test_the_wheel_has_every_package_and_the_plugin(tmp_path: Path) -> None:
    project = _copy_checkout(tmp_path)
    wheels = tmp_path / "wheels"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "-w",
        wheels,
        project,
        cwd=tmp_path,
    )
    [wheel] = wheels.glob("rtunnel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {
        str(init.parent.relative_to(REPO_ROOT))
        for init in (REPO_ROOT / "rtunnel").rglob("__init__.py")
    }
    missing = sorted(p for p in packages if f"{p}/__init__.py" not in names)
    assert missing == []
    assert "rtunnel/operations/config.py" in names
    assert "twisted/plugins/rtunnel_plugin.py" in names
    # Never an __init__.py there: it would hide Twisted's own plugins.
    assert "twisted/__init__.py" not in names and "twisted/plugins/__init__.py" not in names
