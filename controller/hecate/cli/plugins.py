"""Commands other distributions add to ``hecate`` (the lab's ``hecate lab ...``), found by entry point.

A distribution registers a click command in the entry-point group ``hecate.commands``; the
product never imports one by name, so an install without the lab offers no lab command.
Plugins load lazily, only when ``hecate --help`` lists the commands or one is invoked: the
product's own commands (``hecate shutdown`` above all) never load a plugin, and a plugin
cannot replace one of them. A plugin that fails to load is skipped with one line on stderr.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import click

GROUP = "hecate.commands"


def discover() -> dict[str, EntryPoint]:
    """The commands installed distributions register, by name (none when the metadata is unreadable)."""
    try:
        found = entry_points(group=GROUP)
    except Exception as err:  # a broken distribution's metadata must not break the product's CLI
        _skipped(f"the {GROUP} entry points could not be read: {_one_line(err)}")
        return {}
    return {ep.name: ep for ep in found}


def load(ep: EntryPoint) -> click.Command | None:
    """The plugin's command, or None (said on stderr) when it does not load or is no click command."""
    try:
        command = ep.load()
    except Exception as err:  # e.g. its package or one of its imports is missing: skip it, keep the rest
        _skipped(f"command {ep.name!r} ({ep.value}) not loaded: {_one_line(err)}")
        return None
    if not isinstance(command, click.Command):
        _skipped(f"command {ep.name!r} ({ep.value}) is not a click command")
        return None
    return command


class PluginGroup(click.Group):
    """A click group that also offers the plugins' commands; its own commands always win."""

    def _plugins(self) -> dict[str, EntryPoint]:
        return {name: ep for name, ep in discover().items() if name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        ep = self._plugins().get(cmd_name)
        return None if ep is None else load(ep)


def _one_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _skipped(message: str) -> None:
    click.echo(f"hecate: plugin skipped: {message}", err=True)
