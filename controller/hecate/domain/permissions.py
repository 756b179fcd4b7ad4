"""Who may read and write the files Hecate trusts: rules on a file's mode and owner. Pure.

Hecate runs as root and powers machines off. A private key or password that others can read
lets them log in to every node or command the UPS; a known_hosts others can write lets them
add a host key and stand in for a node; a state dir others can write lets them forge the run
history (the learned budget) or the policy cache. So ``hecate config validate`` and the
daemon refuse, naming the setting, the file and the command that fixes it:

- **secrets** (``ssh.key_file``, ``ups[].credentials_file``, ``peer.secret_file``,
  ``peer.trusted[].secret_file``): no access at all for group or others (like OpenSSH for a private
  key) -- ``chmod 600 FILE``;
- **known_hosts** (``ssh.known_hosts``): not writable by group or others (it holds public
  keys: reading it is harmless) -- ``chmod 644 FILE``;
- **the state dir** (``state_dir``): a directory not writable by group or others --
  ``chmod 700 DIR``;
- and each must belong to root or to the user Hecate runs as (root in production; the
  tests' own user when they run unprivileged) -- ``chown``.

The caller stats the files (``hecate.adapters.config.check_files``); this module decides.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from hecate.domain.config import HecateConfig


class Kind(StrEnum):
    secret = "secret"  # noqa: S105 - the kind of file, not a password
    known_hosts = "known_hosts"
    state_dir = "state_dir"


@dataclass(frozen=True)
class FileMode:
    """What the rules look at: ``st_mode`` and ``st_uid`` of the file (links followed)."""

    mode: int
    uid: int


def files_to_check(config: HecateConfig) -> list[tuple[str, Path, Kind]]:
    """(dotted setting, path, kind) of every file and directory the rules apply to."""
    out = [("ssh.key_file", config.ssh.key_file, Kind.secret),
           ("ssh.known_hosts", config.ssh.known_hosts, Kind.known_hosts)]
    out += [(f"ups[{i}].credentials_file", u.credentials_file, Kind.secret)
            for i, u in enumerate(config.ups) if u.credentials_file is not None]
    if config.peer.secret_file is not None:
        out.append(("peer.secret_file", config.peer.secret_file, Kind.secret))
    out += [(f"peer.trusted[{i}].secret_file", t.secret_file, Kind.secret) for i, t in enumerate(config.peer.trusted)]
    out.append(("state_dir", config.state_dir, Kind.state_dir))
    return out


def problems(field: str, path: str, kind: Kind, found: FileMode, uid: int) -> list[str]:
    """Why ``path`` (the value of setting ``field``) may not be trusted, each with its fix; empty if it may.

    ``uid`` is the user Hecate runs as: root and that user may own the file.
    """
    bits = stat.S_IMODE(found.mode)
    shown = f"mode {bits:04o}"
    out = []
    if kind is Kind.state_dir:
        if not stat.S_ISDIR(found.mode):
            return [f"{field}: {path} is not a directory"]
        if bits & 0o022:
            out.append(f"{field}: {path} is writable by {_who(bits & 0o022)} ({shown}): anyone who can write it "
                       f"can forge the run history or the policy cache; run `chmod 700 {path}`")
    elif not stat.S_ISREG(found.mode):
        return [f"{field}: {path} is not a regular file"]
    elif kind is Kind.secret and bits & 0o077:
        out.append(f"{field}: {path} is {_access(bits)} by {_who(bits & 0o077)} ({shown}): a secret must be "
                   f"readable by its owner alone; run `chmod 600 {path}`")
    elif kind is Kind.known_hosts and bits & 0o022:
        out.append(f"{field}: {path} is writable by {_who(bits & 0o022)} ({shown}): anyone who can write it can "
                   f"add a host key and stand in for a node; run `chmod 644 {path}`")
    if found.uid not in (0, uid):
        owner = "root" if uid == 0 else f"root or uid {uid} (the user Hecate runs as)"
        out.append(f"{field}: {path} belongs to uid {found.uid}, not to {owner}: its owner can change it; "
                   f"run `chown {'root' if uid == 0 else uid} {path}`")
    return out


def _who(bits: int) -> str:
    group, others = bits & 0o070, bits & 0o007
    return "group and others" if group and others else ("group" if group else "others")


def _access(bits: int) -> str:
    return "readable" if bits & 0o044 else "accessible"
