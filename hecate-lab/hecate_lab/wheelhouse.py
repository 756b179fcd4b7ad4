"""Wheels of the product and everything it depends on, for installs where there is no network.

Lab machines live in network namespaces that reach only the lab's bridge, and the container
image installs from the wheels its build stage made: both install Hecate with ``pip install
--no-index --find-links <wheelhouse>``. :func:`build` makes such a directory from a checkout
(``pip wheel``; the network is needed once, to fetch the dependencies) and keeps it under a
cache directory keyed by the checkout's packaging inputs, so one suite builds it once.
:func:`build_variant` makes a wheel of a modified copy of the checkout (another version, or a
deliberately broken one) for the self-update tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from hecate_lab.procs import LabError

CHECKOUT = Path(__file__).resolve().parents[2]
"""The checkout this lab belongs to (hecate-lab/ sits at its top)."""
CACHE = Path(os.environ.get("HECATE_LAB_WHEELS", "/var/tmp/hecate-lab-wheels"))  # noqa: S108 - root's cache
_INPUTS = ("pyproject.toml", "controller")
BUILD_REQUIREMENT = "setuptools>=68"
"""pyproject.toml's build-system requirement, kept in the wheelhouse for offline builds of a checkout."""


def _digest(checkout: Path) -> str:
    h = hashlib.sha256()
    for top in _INPUTS:
        path = checkout / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                       and "__pycache__" not in p.parts and ".egg-info" not in str(p))
        for f in files:
            h.update(str(f.relative_to(checkout)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def _copy_source(checkout: Path, dest: Path) -> Path:
    """The product's packaging inputs only (no .venv, no lab, no .git)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(checkout / name, dest / name)
    shutil.copytree(checkout / "controller", dest / "controller",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    return dest


def _pip_wheel(source: Path | str, dest: Path, *, deps: bool) -> None:
    argv = [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(dest)]
    proc = subprocess.run([*argv, *([] if deps else ["--no-deps"]), str(source)],
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise LabError(f"pip wheel {source} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")


def build(checkout: Path = CHECKOUT, cache: Path = CACHE) -> Path:
    """The wheelhouse of ``checkout`` (its product wheel, every dependency and the build backend), built once
    per content."""
    target = cache / ("v2-" + _digest(checkout))
    if (target / ".complete").exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        work = Path(tmp)
        _pip_wheel(_copy_source(checkout, work / "src"), work / "wheels", deps=True)
        # The build backend too: pip builds a checkout offline only with it at hand (build isolation).
        _pip_wheel(BUILD_REQUIREMENT, work / "wheels", deps=False)
        (work / "wheels" / ".complete").touch()
        shutil.rmtree(target, ignore_errors=True)
        (work / "wheels").rename(target)
    return target


def build_variant(dest: Path, *, version: str, edit: Callable[[Path], None] | None = None,
                  checkout: Path = CHECKOUT) -> Path:
    """A wheel of the product with ``version`` (and ``edit`` applied to a copy of the source), in ``dest``.

    Only the product's wheel: its dependencies come from :func:`build`'s wheelhouse.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = _copy_source(checkout, Path(tmp) / "src")
        pyproject = src / "pyproject.toml"
        text, n = re.subn(r'(?m)^version = "[^"]*"$', f'version = "{version}"', pyproject.read_text(), count=1)
        if n != 1:
            raise LabError("pyproject.toml has no static `version = \"...\"` line")
        pyproject.write_text(text)
        if edit is not None:
            edit(src)
        dest.mkdir(parents=True, exist_ok=True)
        _pip_wheel(src, dest, deps=False)
    wheels = sorted(dest.glob(f"hecate-{version}-*.whl"))
    if not wheels:
        raise LabError(f"no hecate {version} wheel in {dest}")
    return wheels[-1]
