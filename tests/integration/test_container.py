"""The container image, checked where no image can be built (no container engine, no base images).

The Dockerfile is linted (hadolint) and every step it runs is ``host/container/install.sh``, run
here for real: the runtime stage's ``venv`` step into a fresh venv of the system python, with the
suite's wheelhouse standing in for the build stage's wheels (both are ``pip wheel`` of the same
inputs: pyproject.toml, README.md, controller/), and the ``account`` step in a scratch system tree.
The Dockerfile itself may name only files that exist, enter the build context and are tested here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2]
DOCKERFILE = CHECKOUT / "Dockerfile"
SCRIPT = CHECKOUT / "host" / "container" / "install.sh"
VERSION = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())["project"]["version"]
NOT_IN_THE_IMAGE = ("hecate-lab", "kmock", "pytest", "ruff", "mypy")
"""Distributions the image must not hold: the lab and its emulator, the dev tools."""


def _tool(name: str) -> str:
    """A dev tool from the dev extra (beside this interpreter, else on PATH)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: it comes with the dev extra (pip install -e '.[dev]')")
    return found


def _system_env(home: Path) -> dict[str, str]:
    """What a build step sees: the system's PATH (so `python3` is the system python), no venv, no pip config."""
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
            "LANG": "C.UTF-8", "PIP_CONFIG_FILE": os.devnull}


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in DOCKERFILE.read_text().splitlines()
                                             if not line.lstrip().startswith("#")))
    return [(word.upper(), rest.strip()) for word, _, rest in
            (line.strip().partition(" ") for line in joined.splitlines() if line.strip())]


def _dockerignore_allows(path: str) -> bool:
    """Whether ``path`` enters the build context (the last pattern matching it or a parent decides)."""
    allowed = True
    candidates = [path] + [str(p) for p in Path(path).parents if str(p) != "."]
    for raw in (CHECKOUT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").rstrip("/")
        regex = re.escape(body).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, c) for c in candidates):
            allowed = negated
    return allowed


@pytest.fixture(scope="module")
def image_venv(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The runtime stage's step, once per module: (venv, HOME it ran with, what it printed)."""
    work = tmp_path_factory.mktemp("image")
    (work / "home").mkdir()
    venv = work / "opt" / "hecate" / "venv"
    proc = subprocess.run(["sh", str(SCRIPT), "venv", str(wheelhouse), str(venv)], env=_system_env(work / "home"),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return venv, work / "home", proc.stdout


def test_hadolint_reports_nothing() -> None:
    hadolint = _tool("hadolint")
    proc = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, ""), proc.stdout + proc.stderr
    # The linter does judge: an unpinned base is reported at that threshold.
    bad = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", "-"], input="FROM python\n",
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode != 0
    assert "DL3006" in bad.stdout


def test_install_script_is_shellcheck_clean() -> None:
    proc = subprocess.run([_tool("shellcheck"), "--severity=style", str(SCRIPT)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stdout + proc.stderr


@pytest.mark.timeout(600)  # the first user of the session's wheelhouse may build it
def test_venv_step_installs_the_product_alone_from_the_wheels(image_venv: tuple[Path, Path, str]) -> None:
    venv, home, printed = image_venv
    assert f"hecate, version {VERSION}" in printed  # the step's own check ran
    cfg = dict(line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line)
    assert cfg["home"] == "/usr/bin"  # the system python's (in the image: the base image's python3)
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json",
                             "--disable-pip-version-check"], env=_system_env(home), capture_output=True, text=True,
                            timeout=60, check=True)
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    assert "hecate" in names
    assert "kopf" in names  # the dependencies came from the wheels
    assert names.isdisjoint(NOT_IN_THE_IMAGE), sorted(names & set(NOT_IN_THE_IMAGE))
    lab = subprocess.run([str(venv / "bin" / "hecate"), "lab", "--help"], env=_system_env(home),
                         capture_output=True, text=True, timeout=60, check=False)
    assert lab.returncode == 2, "`hecate lab` exists in the image"


@pytest.mark.timeout(600)
def test_image_venv_validates_the_example_config(image_venv: tuple[Path, Path, str], tmp_path: Path) -> None:
    venv, home, _ = image_venv
    state = tmp_path / "state"  # not this host's /var/lib/hecate: the example's state dir is judged if it exists
    state.mkdir(mode=0o700)
    example = CHECKOUT / "host" / "hecate.example.yaml"
    proc = subprocess.run([str(venv / "bin" / "hecate"), "config", "validate", "--config", str(example)],
                          env={**_system_env(home), "HECATE_STATE_DIR": str(state)},
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert f"{example}: OK (role coordinator" in proc.stdout


def test_account_step_makes_the_unprivileged_user_and_its_dirs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("useradd --root needs root")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name, line, mode in (("passwd", "root:x:0:0:root:/root:/bin/sh", 0o644), ("group", "root:x:0:", 0o644),
                             ("shadow", "root:*:19000:0:99999:7:::", 0o640), ("gshadow", "root:*::", 0o640)):
        (root / "etc" / name).write_text(line + "\n")
        (root / "etc" / name).chmod(mode)
    proc = subprocess.run(["sh", str(SCRIPT), "account", str(root)], env=_system_env(tmp_path),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "hecate:x:10001:10001:Hecate:/var/lib/hecate:/usr/sbin/nologin" in (root / "etc/passwd").read_text()
    assert "hecate:x:10001:" in (root / "etc/group").read_text()
    for own in ("var/lib/hecate", "run/hecate"):  # hecate.yaml's default state dir and socket dir
        st = (root / own).stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (10001, 10001, 0o700), own
    assert [arg for word, arg in _instructions() if word == "USER"][-1] == "10001:10001"


def test_dockerfile_names_only_existing_context_files_and_the_tested_steps() -> None:
    instructions = _instructions()
    bases = [arg for word, arg in instructions if word == "FROM"]
    assert len(bases) == 2, bases  # a build stage and the runtime stage
    pinned = [b.split()[0] for b in bases]
    assert len(set(pinned)) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", pinned[0]), pinned[0]
    assert bases[0].endswith(" AS build")

    copied, bound, from_build, steps = set(), set(), set(), []
    for word, arg in instructions:
        if word == "COPY" and "--from" not in arg:
            copied.update(arg.split()[:-1])
        if word == "RUN":
            for spec in re.findall(r"--mount=(\S+)", arg):
                mount = dict(kv.split("=", 1) for kv in spec.split(","))
                (from_build if mount.get("from") == "build" else bound).add(mount["source"])
            steps += re.findall(r"(?:install\.sh|hecate-image-install) (\w+(?: [^\s&;|]+)*)", arg)
            assert "install.sh" in arg or "hecate-image-install" in arg, f"a RUN line outside the script: {arg}"
    for source in copied | bound:
        assert (CHECKOUT / source).exists(), f"{source} does not exist"
        assert _dockerignore_allows(source.rstrip("/")), f"{source} is kept out of the context by .dockerignore"
    # The build stage wheels exactly the inputs the wheelhouse fixture wheels, so that fixture stands in for it.
    assert {s.rstrip("/") for s in copied} - {"host/container/install.sh"} == {"pyproject.toml", "README.md",
                                                                              "controller"}
    assert {"host/container/install.sh"} <= copied & bound
    # The steps this module runs (the build stage's needs the index); the runtime stage takes the build's wheels.
    assert [step.split()[0] for step in steps] == ["wheels", "venv", "account"], steps
    assert from_build == {steps[0].split()[2]}, (from_build, steps[0])
    for kept_out in ("hecate-lab/pyproject.toml", "tests/conftest.py", ".venv", ".git", "Dockerfile"):
        assert not _dockerignore_allows(kept_out), kept_out

    labels = " ".join(arg for word, arg in instructions if word == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert f'org.opencontainers.image.base.name="docker.io/library/{pinned[0]}"' in labels
    assert f"ARG VERSION={VERSION}" in DOCKERFILE.read_text()  # the label's default follows pyproject.toml
    assert ("ENTRYPOINT", '["hecate"]') in instructions
