"""The lab is not part of the product: `hecate lab` comes from the hecate-lab distribution's entry point.

A plain install of the product pulls no kmock and offers no lab command; a plugin that does not
load costs one line on stderr, never the product's own commands.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from hecate.cli import cli, plugins


def _names(requirements: list[str] | None) -> set[str]:
    return {re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0].lower() for r in requirements or []}


def _commands(help_text: str) -> set[str]:
    """The command names of a click help page's Commands section."""
    section = help_text.split("Commands:", 1)[1]
    return {line.split()[0] for line in section.splitlines() if line.startswith("  ") and line.strip()}


def _only(found: list[importlib.metadata.EntryPoint]) -> importlib.metadata.EntryPoints:
    return importlib.metadata.EntryPoints(found)


def test_the_product_does_not_require_kmock_the_lab_does() -> None:
    assert "kmock" not in _names(importlib.metadata.requires("hecate"))  # not even in an extra
    assert {"hecate", "kmock"} <= _names(importlib.metadata.requires("hecate-lab"))


def test_the_lab_registers_its_command_by_entry_point() -> None:
    found = importlib.metadata.entry_points(group=plugins.GROUP)
    assert [(ep.name, ep.value, ep.dist.name if ep.dist else None) for ep in found] == [
        ("lab", "hecate_lab.cli:lab", "hecate-lab")]


def test_help_lists_lab_when_the_lab_is_installed() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert _commands(result.output) == {"config", "daemon", "drill", "lab", "self-update", "shutdown", "startup",
                                        "status"}
    assert CliRunner().invoke(cli, ["lab", "--help"]).exit_code == 0


def test_without_the_entry_point_there_is_no_lab_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugins, "entry_points", lambda group: _only([]))
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert _commands(result.output) == {"config", "daemon", "drill", "self-update", "shutdown", "startup", "status"}
    assert result.stderr == ""
    missing = CliRunner().invoke(cli, ["lab", "up"])
    assert missing.exit_code == 2
    assert "No such command 'lab'" in missing.stderr


def test_a_broken_plugin_costs_one_line_not_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = [
        importlib.metadata.EntryPoint(name="missing", value="hecate_no_such_plugin:command", group=plugins.GROUP),
        importlib.metadata.EntryPoint(name="notacommand", value="os:sep", group=plugins.GROUP),
        importlib.metadata.EntryPoint(name="shutdown", value="hecate_no_such_plugin:shutdown", group=plugins.GROUP),
    ]
    monkeypatch.setattr(plugins, "entry_points", lambda group: _only(broken))

    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert _commands(result.output) == {"config", "daemon", "drill", "self-update", "shutdown", "startup", "status"}
    assert result.stderr.splitlines() == [
        "hecate: plugin skipped: command 'missing' (hecate_no_such_plugin:command) not loaded: "
        "ModuleNotFoundError: No module named 'hecate_no_such_plugin'",
        "hecate: plugin skipped: command 'notacommand' (os:sep) is not a click command",
    ]
    # The product's own commands never load a plugin, and a plugin cannot take their name.
    shutdown = CliRunner().invoke(cli, ["shutdown", "--help"])
    assert shutdown.exit_code == 0, shutdown.output
    assert "Take the cluster down gracefully" in shutdown.output
    assert shutdown.stderr == ""


def test_unreadable_entry_points_cost_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(group: str) -> importlib.metadata.EntryPoints:
        raise ValueError("bad metadata\nsecond line")

    monkeypatch.setattr(plugins, "entry_points", unreadable)
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0, result.output
    assert "shutdown" in _commands(result.output)
    assert "the hecate.commands entry points could not be read: ValueError: bad metadata" in result.stderr


BLOCKED = """\
import sys
sys.modules["kmock"] = None  # as if not installed: importing it raises ImportError
sys.modules["hecate_lab"] = None
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKED + textwrap.dedent(code), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_every_product_module_imports_without_the_lab_or_kmock() -> None:
    done = _python("""
        import importlib, pkgutil
        import hecate.cli, hecate.daemon
        import hecate
        names = [m.name for m in pkgutil.walk_packages(hecate.__path__, "hecate.") if m.name != "hecate.__main__"]
        for name in names:
            importlib.import_module(name)
        print(len(names))
    """)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 30  # the walk found the product's modules


def test_the_cli_works_when_the_lab_cannot_be_imported() -> None:
    helped = _python("""
        from hecate.cli import main
        sys.argv[0] = "hecate"
        main()
    """, "--help")
    assert helped.returncode == 0, helped.stderr
    assert "lab" not in _commands(helped.stdout)
    assert "shutdown" in _commands(helped.stdout)
    [line] = helped.stderr.splitlines()  # the entry point is there, its package is not: one line
    assert line.startswith("hecate: plugin skipped: command 'lab' (hecate_lab.cli:lab) not loaded: "
                           "ModuleNotFoundError: "), line
    shutdown = _python("""
        from hecate.cli import main
        main()
    """, "shutdown", "--help")
    assert shutdown.returncode == 0, shutdown.stderr
    assert shutdown.stderr == ""
