"""Secret files others may read and a state dir others may write are refused, naming setting, file and fix."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hecate.adapters import config
from hecate.domain.config import HecateConfig
from hecate.domain.permissions import FileMode, Kind, files_to_check, problems

FILE, DIR = stat.S_IFREG, stat.S_IFDIR


@pytest.mark.parametrize(("kind", "mode", "uid", "expected"), [
    (Kind.secret, FILE | 0o600, 0, None),
    (Kind.secret, FILE | 0o400, 0, None),
    (Kind.secret, FILE | 0o640, 0, "is readable by group (mode 0640): a secret must be readable by its owner "
                                   "alone; run `chmod 600 /f`"),
    (Kind.secret, FILE | 0o604, 0, "is readable by others (mode 0604)"),
    (Kind.secret, FILE | 0o644, 0, "is readable by group and others (mode 0644)"),
    (Kind.secret, FILE | 0o620, 0, "is accessible by group (mode 0620)"),
    (Kind.secret, DIR | 0o700, 0, "/f is not a regular file"),
    (Kind.known_hosts, FILE | 0o644, 0, None),
    (Kind.known_hosts, FILE | 0o664, 0, "is writable by group (mode 0664): anyone who can write it can add a host "
                                        "key and stand in for a node; run `chmod 644 /f`"),
    (Kind.known_hosts, FILE | 0o646, 0, "is writable by others (mode 0646)"),
    (Kind.state_dir, DIR | 0o700, 0, None),
    (Kind.state_dir, DIR | 0o755, 0, None),
    (Kind.state_dir, DIR | 0o775, 0, "is writable by group (mode 0775): anyone who can write it can forge the run "
                                     "history or the policy cache; run `chmod 700 /f`"),
    (Kind.state_dir, DIR | 0o1777, 0, "is writable by group and others (mode 1777)"),
    (Kind.state_dir, FILE | 0o600, 0, "/f is not a directory"),
    (Kind.secret, FILE | 0o600, 1000,
     "/f belongs to uid 1000, not to root: its owner can change it; run `chown root /f`"),
    (Kind.state_dir, DIR | 0o700, 1000, "belongs to uid 1000, not to root"),
])
def test_the_rules_running_as_root(kind: Kind, mode: int, uid: int, expected: str | None) -> None:
    found = problems("the.field", "/f", kind, FileMode(mode, uid), 0)
    if expected is None:
        assert found == []
    else:
        [text] = found
        assert text.startswith("the.field: /f ")
        assert expected in text


def test_the_user_hecate_runs_as_may_own_its_files() -> None:
    # Unprivileged (the tests' own user): files of that user or of root are fine, another user's are not.
    assert problems("s", "/f", Kind.secret, FileMode(FILE | 0o600, 1000), 1000) == []
    assert problems("s", "/f", Kind.secret, FileMode(FILE | 0o600, 0), 1000) == []
    [text] = problems("s", "/f", Kind.secret, FileMode(FILE | 0o600, 1001), 1000)
    assert text == ("s: /f belongs to uid 1001, not to root or uid 1000 (the user Hecate runs as): its owner can "
                    "change it; run `chown 1000 /f`")


def test_every_problem_of_a_file_is_told_at_once() -> None:
    assert len(problems("s", "/f", Kind.secret, FileMode(FILE | 0o644, 1000), 0)) == 2


def test_the_files_that_are_checked() -> None:
    cfg = HecateConfig.model_validate({
        "ups": [{"name": "a"}, {"name": "b", "credentials_file": "/etc/hecate/nut.cred"}],
        "peer": {"secret_file": "/etc/hecate/peer.secret"}})
    assert [(field, str(path), kind) for field, path, kind in files_to_check(cfg)] == [
        ("ssh.key_file", "/etc/hecate/id_ed25519", Kind.secret),
        ("ssh.known_hosts", "/etc/hecate/known_hosts", Kind.known_hosts),
        ("ups[1].credentials_file", "/etc/hecate/nut.cred", Kind.secret),
        ("peer.secret_file", "/etc/hecate/peer.secret", Kind.secret),
        ("state_dir", "/var/lib/hecate", Kind.state_dir),
    ]


# -- real files ------------------------------------------------------------------------------------


def host_files(tmp_path: Path) -> dict[str, Path]:
    files = {"key": tmp_path / "id_ed25519", "known_hosts": tmp_path / "known_hosts",
             "nut": tmp_path / "nut.cred", "peer": tmp_path / "peer.secret"}
    for path in files.values():
        path.write_text("x\n")
        path.chmod(0o600)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    files["state"] = state
    config_path = tmp_path / "hecate.yaml"
    config_path.write_text(
        f"state_dir: {state}\nssh: {{key_file: {files['key']}, known_hosts: {files['known_hosts']}}}\n"
        f"ups: [{{name: p, port: 1, credentials_file: {files['nut']}}}]\npeer: {{secret_file: {files['peer']}}}\n")
    files["config"] = config_path
    return files


def check(path: Path) -> list[str]:
    try:
        config.check_files(config.load(path, {}))
    except config.ConfigError as err:
        return str(err).splitlines()
    return []


def test_well_kept_files_pass_and_missing_ones_are_not_judged(tmp_path: Path) -> None:
    files = host_files(tmp_path)
    files["known_hosts"].chmod(0o644)
    assert check(files["config"]) == []
    files["peer"].unlink()
    assert check(files["config"]) == []


def test_loose_files_are_all_refused_naming_setting_file_and_fix(tmp_path: Path) -> None:
    files = host_files(tmp_path)
    files["key"].chmod(0o644)
    files["known_hosts"].chmod(0o666)
    files["nut"].chmod(0o640)
    files["peer"].chmod(0o604)
    files["state"].chmod(0o777)
    lines = check(files["config"])
    assert [line.split(": ")[0] for line in lines] == [
        "ssh.key_file", "ssh.known_hosts", "ups[0].credentials_file", "peer.secret_file", "state_dir"]
    assert lines[0] == (f"ssh.key_file: {files['key']} is readable by group and others (mode 0644): a secret must "
                        f"be readable by its owner alone; run `chmod 600 {files['key']}`")
    assert lines[2].endswith(f"run `chmod 600 {files['nut']}`")
    assert lines[4].endswith(f"run `chmod 700 {files['state']}`")


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_a_file_of_another_user_is_refused(tmp_path: Path) -> None:
    files = host_files(tmp_path)
    os.chown(files["key"], 65534, -1)
    os.chown(files["state"], 65534, -1)
    lines = check(files["config"])
    assert lines == [f"ssh.key_file: {files['key']} belongs to uid 65534, not to root: its owner can change it; "
                     f"run `chown root {files['key']}`",
                     f"state_dir: {files['state']} belongs to uid 65534, not to root: its owner can change it; "
                     f"run `chown root {files['state']}`"]


@pytest.mark.timeout(60)
def test_config_validate_and_the_daemon_refuse_with_exit_2(tmp_path: Path) -> None:
    files = host_files(tmp_path)
    files["key"].chmod(0o640)
    for command in (["config", "validate"], ["daemon"]):
        done = subprocess.run([sys.executable, "-m", "hecate", *command, "--config", str(files["config"])],
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 2, done.stderr
        assert done.stderr == (f"hecate: configuration error:\nssh.key_file: {files['key']} is readable by group "
                               f"(mode 0640): a secret must be readable by its owner alone; "
                               f"run `chmod 600 {files['key']}`\n")
    files["key"].chmod(0o600)
    ok = subprocess.run([sys.executable, "-m", "hecate", "config", "validate", "--config", str(files["config"])],
                        capture_output=True, text=True, timeout=30, check=False)
    assert ok.returncode == 0, ok.stderr
