"""The installation's releases on disk, and pip: resolve a candidate, build a release venv, check it.

Layout (``update.prefix``, default ``/opt/hecate``)::

    releases/<version>-<UTC stamp>/   one complete venv each (bin/hecate, bin/python)
        hecate-release.json           what it was built from (version, pip requirement, git commit)
    current  -> releases/<id>         relative link the units and /usr/local/bin/hecate go through
    previous -> releases/<id>         the release before, for a roll-back
    rejected/<candidate>              candidates that failed to become ready (not retried), with why

Links are switched atomically: a new link beside the old one, then ``rename(2)`` over it, so
``current`` always names a whole release. Every failure of a subprocess here becomes a
:class:`ReleaseError` whose message carries the tail of the tool's output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from hecate.domain.update import Candidate

log = logging.getLogger(__name__)

RELEASES = "releases"
CURRENT = "current"
PREVIOUS = "previous"
REJECTED = "rejected"
MANIFEST = "hecate-release.json"
_OUTPUT_TAIL = 800


class ReleaseError(Exception):
    """A build, check or switch failed; ``str(err)`` says which and why."""


def _run(argv: Sequence[str], timeout_s: float, what: str, env: Mapping[str, str] | None = None) -> str:
    """Run ``argv``; its stdout, or ReleaseError naming ``what`` with the tail of its output."""
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False,
                              env=dict(env) if env is not None else None)
    except subprocess.TimeoutExpired as err:
        raise ReleaseError(f"{what}: no answer within {timeout_s:g} s") from err
    except OSError as err:
        raise ReleaseError(f"{what}: {err}") from err
    if proc.returncode != 0:
        out = (proc.stderr.strip() or proc.stdout.strip())[-_OUTPUT_TAIL:]
        raise ReleaseError(f"{what} failed (exit {proc.returncode}): {out}")
    return proc.stdout


def resolve(python: Path, requirement: str, source_args: Sequence[str], timeout_s: float) -> Candidate:
    """The version (and git commit) pip would install for ``requirement`` now, installing nothing."""
    out = _run([str(python), "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", "--no-deps",
                "--ignore-installed", "--disable-pip-version-check", *source_args, requirement],
               timeout_s, f"resolving {requirement!r}")
    try:
        report = json.loads(out)
        item = report["install"][0]
        version = str(item["metadata"]["version"])
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise ReleaseError(f"resolving {requirement!r}: pip's report names no package ({err!r})") from err
    commit = item.get("download_info", {}).get("vcs_info", {}).get("commit_id")
    return Candidate(version, str(commit) if commit else None)


class Releases:
    """The releases under one prefix and its ``current``/``previous`` links."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        self.dir = prefix / RELEASES

    def path(self, release: str) -> Path:
        return self.dir / release

    def linked(self, name: str) -> str | None:
        """The release ``current`` or ``previous`` points at, or None (no link, or not into releases/)."""
        try:
            target = Path(os.readlink(self.prefix / name))
        except OSError:
            return None
        return target.name if target.parent.name == RELEASES and (self.dir / target.name).is_dir() else None

    def all(self) -> list[str]:
        try:
            return sorted(p.name for p in self.dir.iterdir() if p.is_dir() and not p.is_symlink())
        except FileNotFoundError:
            return []

    def commit(self, release: str) -> str | None:
        """The git commit a release was built from, when its manifest says (not for index or installer builds)."""
        try:
            value = json.loads((self.path(release) / MANIFEST).read_text()).get("commit")
        except (OSError, ValueError, AttributeError):
            return None
        return str(value) if value else None

    def build(self, release: str, python: Path, requirement: str, source_args: Sequence[str],
              timeout_s: float) -> Path:
        """A fresh venv with ``requirement`` installed in ``releases/<release>``; removed again if that fails."""
        dest = self.path(release)
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            _run([str(python), "-m", "venv", str(dest)], timeout_s, f"creating the venv {dest}")
            _run([str(dest / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                  "--no-cache-dir", *source_args, requirement], timeout_s, f"pip install {requirement!r}")
        except ReleaseError:
            self.remove(release)
            raise
        return dest

    def write_manifest(self, release: str, candidate: Candidate, requirement: str) -> None:
        (self.path(release) / MANIFEST).write_text(json.dumps(
            {"version": candidate.version, "commit": candidate.commit, "requirement": requirement}, indent=2) + "\n")

    def check(self, release: str, config: Path, timeout_s: float) -> str:
        """``bin/hecate --version`` of the release (its output); then ``config validate`` on ``config``."""
        hecate = str(self.path(release) / "bin" / "hecate")
        out = _run([hecate, "--version"], timeout_s, f"{release}: hecate --version")
        _run([hecate, "config", "validate", "--config", str(config)], timeout_s,
             f"{release}: hecate config validate --config {config}")
        return out

    def switch(self, name: str, release: str | None) -> None:
        """Point ``current``/``previous`` at ``release`` atomically (None removes the link)."""
        link = self.prefix / name
        if release is None:
            try:
                link.unlink(missing_ok=True)
            except OSError as err:
                raise ReleaseError(f"removing {link}: {err}") from err
            return
        staging = self.prefix / f".{name}.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            staging.unlink()
        try:
            os.symlink(f"{RELEASES}/{release}", staging)
            os.replace(staging, link)
        except OSError as err:
            with contextlib.suppress(OSError):
                staging.unlink()
            raise ReleaseError(f"switching {link} to {release}: {err}") from err
        with contextlib.suppress(OSError):  # the rename is durable once the directory is
            fd = os.open(self.prefix, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def remove(self, release: str) -> None:
        shutil.rmtree(self.path(release), ignore_errors=True)

    def rejected(self) -> dict[str, str]:
        """Candidates rolled back before, with why."""
        folder = self.prefix / REJECTED
        try:
            return {p.name: p.read_text().strip() for p in folder.iterdir() if p.is_file()}
        except OSError:
            return {}

    def reject(self, key: str, why: str) -> Path:
        folder = self.prefix / REJECTED
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / key.replace("/", "_")
        path.write_text(why + "\n")
        return path
