"""The ``hecate`` command: parse flags, load settings, wire adapters -- no logic here.

Heavy libraries (kopf, kubernetes, paramiko) are imported inside the commands that need
them, so ``hecate --help`` and ``hecate status`` start fast. Commands of other installed
distributions (the lab's ``hecate lab``) join by entry point: :mod:`hecate.cli.plugins`.

Exit codes (documented in README.md, "The command line"): 0 success; 1 the command or its run
failed (or was aborted); 2 bad usage or an unusable configuration; 3 the run finished degraded
(some steps failed or were skipped: its summary lists them); 4 refused, nothing was done
(another run holds the lock, a drill's preconditions). ``hecate status`` alone exits with a
Nagios-like check state instead (:mod:`hecate.domain.check`; docs/metrics.md, "Exit codes").
Every error is one line on stderr prefixed ``hecate:`` (never a traceback); log records of a run
go there with the same prefix.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from hecate import __version__
from hecate.cli import plugins

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from hecate.cli.progress import RichProgress
    from hecate.domain.config import HecateConfig
    from hecate.domain.plan import Plan
    from hecate.domain.runs import RunRecord

DEFAULT_CONFIG = Path("/etc/hecate/hecate.yaml")

EXIT_SUCCESS = 0
EXIT_FAILED = 1
"""The command failed, or its run failed or was aborted."""
EXIT_USAGE = 2
"""Bad usage or an unusable configuration (click's own usage errors exit 2 as well)."""
EXIT_DEGRADED = 3
"""The run went to its end, but some steps failed or were skipped."""
EXIT_REFUSED = 4
"""Refused before doing anything: another run holds the lock, or a drill's preconditions."""

config_option = click.option(
    "--config", "config_path", type=click.Path(path_type=Path), default=DEFAULT_CONFIG,
    show_default=True, help="Hecate configuration file.",
)
execute_option = click.option(
    "--execute", is_flag=True, help="Really do it. Without this flag the command is a dry-run.",
)


def load_config(path: Path, *, check_files: bool = False, code: int = EXIT_USAGE) -> HecateConfig:
    """Load the configuration or exit ``code`` (2; ``hecate status``: 3, UNKNOWN) with the loader's readable message.

    ``check_files``: also refuse secret files others may read and a state dir others may write.
    """
    from hecate.adapters import config

    try:
        cfg = config.load(path)
        if check_files:
            config.check_files(cfg)
    except config.ConfigError as err:
        fail(f"configuration error:\n{err}", code=code)
    return cfg


def effective_config(config: HecateConfig) -> HecateConfig:
    """hecate.yaml with the cached PowerPolicy laid over it, as the daemon would run it.

    One-shot runs (startup, shutdown, drills) act on the policy in force, not on the file alone;
    the daemon's own operator keeps the cache current.
    """
    from hecate.adapters.store import StateStore, StoreError
    from hecate.services import policy

    if config.policy.name is None:
        return config
    try:
        view = policy.load_effective(config, StateStore(config.state_dir))
    except StoreError as err:
        fail(str(err))
    click.echo(f"policy in force: {view.source.value} ({view.detail})", err=True)
    return view.config


def fail(message: str, code: int = EXIT_FAILED) -> NoReturn:
    from hecate.domain import text

    # The message may quote upsd, the API, a node or the environment: printed cleaned, never raw.
    click.echo(f"hecate: {text.clean(message, None, multiline=True)}", err=True)
    sys.exit(code)


def run_exit_code(record: RunRecord) -> int:
    """A finished run's exit code: 0 success, 3 degraded, 1 failed or aborted."""
    from hecate.domain.runs import RunResult

    return {RunResult.success: EXIT_SUCCESS, RunResult.degraded: EXIT_DEGRADED}.get(
        record.result, EXIT_FAILED) if record.result is not None else EXIT_FAILED


def log_to_stderr(level: str = "WARNING") -> None:
    """Log records from ``level`` up (a run's: warnings and errors; progress shows the rest) as one
    ``hecate:`` line each on stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hecate: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)


@click.group(cls=plugins.PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hecate")
def cli() -> None:
    """Hecate: power protection and staged bootstrap for bare-metal k3s clusters."""


@cli.command()
@config_option
@execute_option
@click.option("--force-flux-branch", metavar="BRANCH",
              help="Point the Flux GitRepository at BRANCH before Flux reconciles (e.g. main).")
@click.option("--at-boot", is_flag=True,
              help="Record the run as started at boot (trigger source `boot`), as hecate-bootstrap.service does.")
def startup(config_path: Path, execute: bool, force_flux_branch: str | None, at_boot: bool) -> None:
    """Bring the cluster back in stages after power returns.

    Without --execute: print the plan and touch nothing. With --execute: run it; on a
    healthy cluster it changes nothing, so it is safe at every boot. Refused (exit 2) on a peer. Exit 0 when the
    cluster is all back, 3 when the run is degraded, 1 when it failed (the summary says what was not done),
    4 when another run holds the lock.
    """
    from hecate.domain.plan import startup_plan
    from hecate.services import startup as startup_mod

    cfg = effective_config(load_config(config_path))
    if cfg.role.value == "peer":
        fail(f"{config_path}: role peer: a peer starts no cluster (the coordinator, {cfg.peer.coordinator_url}, "
             "does); nothing to do here", code=EXIT_USAGE)
    _plan_or_run(startup_plan(cfg, force_branch=force_flux_branch), execute,
                 lambda progress: startup_mod.run(cfg, {"source": "boot" if at_boot else "manual"}, progress,
                                                  force_branch=force_flux_branch))


@cli.command()
@config_option
@execute_option
def shutdown(config_path: Path, execute: bool) -> None:
    """Take the cluster down gracefully and power the hardware off in order.

    Without --execute: print the plan and touch nothing. With --execute: run it (or resume
    the shutdown a killed process left in the journal), showing progress live. On a peer
    (role: peer) the plan is only this host's own steps, its local fallback. Exit 0 when every
    step was done, 3 when the run is degraded (the summary lists what was not done), 1 when it
    failed or was aborted, 4 when another run holds the lock.
    """
    from hecate.domain.plan import shutdown_plan
    from hecate.services import shutdown as shutdown_mod

    cfg = effective_config(load_config(config_path))
    if cfg.role.value == "peer":
        click.echo("hecate: role peer: only this host's own steps (the local fallback); the cluster's shutdown is "
                   f"the coordinator's ({cfg.peer.coordinator_url})", err=True)
    _plan_or_run(shutdown_plan(cfg), execute, lambda progress: shutdown_mod.run(cfg, {"source": "manual"}, progress))


def _plan_or_run(plan: Plan, execute: bool, run: Callable[[RichProgress], Coroutine[Any, Any, RunRecord]]) -> NoReturn:
    """Dry-run: print the plan. Execute: run it with live progress; exit 0 only on success (see the exit codes)."""
    import asyncio

    from hecate.adapters.store import RunInProgress, StoreError
    from hecate.cli.progress import RichProgress, plan_table

    progress = RichProgress()
    if not execute:
        progress.console.print(plan_table(plan))
        progress.console.print(f"Dry-run: nothing was touched. Run with --execute to run the {plan.kind}.")
        sys.exit(EXIT_SUCCESS)
    log_to_stderr()
    try:
        record = asyncio.run(run(progress))
    except RunInProgress as err:
        fail(f"not started: {err}", code=EXIT_REFUSED)
    except StoreError as err:
        fail(str(err))
    sys.exit(run_exit_code(record))


@cli.command()
@config_option
def daemon(config_path: Path) -> None:
    """Watch the UPSes, decide, and serve /metrics, /healthz, /readyz and /v1/status."""
    import asyncio
    import logging

    from hecate import daemon as daemon_mod
    from hecate.adapters.store import StoreError

    cfg = load_config(config_path, check_files=True)
    if not cfg.ups:
        fail(f"{config_path}: no UPS configured (`ups:` is empty): the daemon would have nothing to watch",
             code=EXIT_USAGE)
    # Under systemd (stderr is a journal stream) journald stamps each line: no time of our own.
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=logging.INFO, format=stamp + "%(levelname)s %(name)s: %(message)s")
    if not any(u.protects_cluster for u in cfg.ups):
        logging.getLogger("hecate").warning("no UPS has protects_cluster: true: nothing can trigger a shutdown")
    try:
        asyncio.run(daemon_mod.run(cfg))
    except OSError as err:  # not the HTTP server: a taken port or socket is retried in the background
        fail(f"daemon cannot start: {err}")
    except StoreError as err:
        fail(str(err))


EXIT_UNKNOWN = 3
"""``hecate status`` only: UNKNOWN, as Nagios plugins say it (also for bad usage or an unusable configuration)."""


class CheckUsageError(click.UsageError):
    exit_code = EXIT_UNKNOWN


class CheckCommand(click.Command):
    """A command whose exit codes are Nagios states: its usage errors exit 3 (UNKNOWN), not click's 2 (CRITICAL)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as err:
            raise CheckUsageError(err.message, err.ctx) from err


@cli.command(cls=CheckCommand)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(config_path: Path, as_json: bool) -> None:
    """Show UPS state, budget, threshold and recent runs; exit with a Nagios-like check state.

    Asks the running daemon on its unix socket (metrics.socket, never a TCP port) and
    otherwise polls the UPSes once itself. On a terminal the UPSes are a table; piped, plain text.
    Exit 0 OK; 1 WARNING (an alert, a UPS on battery above its threshold, not armed, no daemon
    running, the daemon's answer unusable); 2 CRITICAL (a protecting UPS at or below its threshold,
    LB/FSD, a shutdown decided or running); 3 UNKNOWN (neither the daemon nor upsd answered, bad
    usage or an unusable configuration). `--json` carries the same verdict under `check`.
    """
    from rich.console import Console

    from hecate.adapters import daemon_client
    from hecate.cli import status_table
    from hecate.domain import check

    cfg = load_config(config_path, code=EXIT_UNKNOWN)
    log_to_stderr("ERROR")  # warnings (a corrupt runs.json moved aside) are in the document: printed once, there
    problem, daemon_down = None, False
    try:
        doc = daemon_client.fetch_status(cfg.metrics.socket)
    except daemon_client.NoDaemon as err:
        if isinstance(err, daemon_client.NotAllowed):
            click.echo(f"hecate: {err}: polling the UPSes directly", err=True)
        else:
            daemon_down = True
        doc = None
    except daemon_client.DaemonError as err:
        problem = f"daemon status unusable: {err}"
        click.echo(f"hecate: {problem}; polling the UPSes directly", err=True)
        doc = None
    if doc is None:
        doc = _poll_directly(cfg)
        if problem:
            doc["warnings"].append(problem)
    verdict = check.evaluate(doc, daemon_down=daemon_down)
    doc["check"] = verdict.as_dict()
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        status_table.show(doc, Console(highlight=False))
    sys.exit(verdict.code)


def _poll_directly(cfg: HecateConfig) -> dict[str, Any]:
    import asyncio

    from hecate.adapters import nut
    from hecate.adapters.store import StateStore, StoreError
    from hecate.services import monitor, policy, status

    try:
        store = StateStore(cfg.state_dir)
    except StoreError as err:
        fail(str(err), code=EXIT_UNKNOWN)
    view = policy.load_effective(cfg, store) if cfg.policy.name else None  # as a daemon starting now would
    mon = monitor.Monitor(view.config if view else cfg, nut.NutReader(), store, _no_action)
    asyncio.run(mon.poll_once())
    doc = status.document(mon, "direct", view)
    if cfg.role.value == "peer":
        from hecate.adapters import peer_client

        doc["peer_forward"] = status.peer_forward(cfg, peer_client.load_forward(store), False, {})
    return doc


async def _no_action(*_: object) -> None:
    """`hecate status` only looks: a decision it computes is shown, never acted on."""


@cli.group()
def config() -> None:
    """Check and show the configuration."""


@config.command("validate")
@config_option
def config_validate(config_path: Path) -> None:
    """Check a configuration file (and HECATE_* overrides) and the files it names; exit 2 if unusable.

    Secret files (SSH key, NUT credentials, peer secret) must not be readable by group or
    others, known_hosts and the state dir not writable by them.
    """
    cfg = load_config(config_path, check_files=True)
    if cfg.role.value == "peer":
        from hecate.adapters import peer_client

        assert cfg.peer.secret_file is not None  # a peer's configuration requires it
        try:
            peer_client.read_secret(cfg.peer.secret_file)
        except peer_client.SecretError as err:
            fail(f"configuration error:\n{config_path}: {err}", code=EXIT_USAGE)
        click.echo(f"{config_path}: OK (role peer, forwards to {cfg.peer.coordinator_url} as "
                   f"{cfg.host_name} with key {cfg.peer.key_id}, {len(cfg.ups)} UPS)")
        return
    click.echo(
        f"{config_path}: OK (role {cfg.role.value}, {len(cfg.cluster.nodes)} nodes, "
        + (f"{len(cfg.hosts)} other hosts, " if cfg.hosts else "") + f"{len(cfg.ups)} UPS)"
    )


@config.command("show")
@config_option
def config_show(config_path: Path) -> None:
    """Print the effective configuration (file + environment + defaults) as YAML."""
    import yaml

    cfg = load_config(config_path)
    click.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)


@cli.command("self-update")
@config_option
@execute_option
def self_update(config_path: Path, execute: bool) -> None:
    """Update this host's installation from update.* in the configuration (docs/update.md).

    Builds the source's new version into a fresh release venv, checks it, switches the
    `current` link and restarts the daemon's unit if it is active, rolling back if the daemon
    does not become ready. Without --execute: say what it would do and change nothing. Exit 0
    when updated, up to date, deferred (a run is in progress) or not configured; 1 when the
    new release failed its check or was rolled back.
    """
    from hecate.adapters.store import StoreError
    from hecate.adapters.systemd import Systemctl
    from hecate.services import update

    cfg = load_config(config_path)
    if not cfg.update.enabled:
        click.echo("hecate: no update source configured (update.spec or update.git_url): nothing to do")
        sys.exit(EXIT_SUCCESS)
    log_to_stderr("INFO")
    try:
        outcome = update.run(cfg, config_path, Systemctl(cfg.update.systemctl), execute=execute)
    except StoreError as err:
        fail(f"self-update not started: {err}")
    if not outcome.result.ok:
        fail(outcome.message)
    click.echo(f"hecate: {outcome.message}")
    sys.exit(EXIT_SUCCESS)


@cli.group()
def drill() -> None:
    """Disruptive drills that prove startup recovers the cluster."""


@drill.command("list")
def drill_list() -> None:
    """List the drills."""
    from hecate.services.drills import DRILLS

    for drill_ in DRILLS.values():
        click.echo(f"{drill_.name:<24} {drill_.summary}")


@drill.command("run")
@click.argument("name")
@config_option
@execute_option
def drill_run(name: str, config_path: Path, execute: bool) -> None:
    """Run one drill: break, start up, check, restore if recovery failed.

    Without --execute: say what the drill would break and touch nothing.
    Exit 0 when the drill passed (or for a dry-run), 1 when it failed, 4 when it was refused
    (nothing was broken).
    """
    import asyncio

    from hecate.adapters.kube import KubeError
    from hecate.adapters.store import RunInProgress, StoreError
    from hecate.cli.progress import RichProgress, shown
    from hecate.services import drills

    if name not in drills.DRILLS:
        fail(f"no drill named {name!r}; one of: {', '.join(drills.DRILLS)}", code=EXIT_USAGE)
    cfg = effective_config(load_config(config_path))
    progress = RichProgress()
    console = progress.console
    console.print(f"[bold]drill {name}[/bold]: {drills.DRILLS[name].summary}")
    console.print("It breaks:" if execute else "It would break (dry-run: nothing is touched):")
    for target in drills.DRILLS[name].targets(cfg):
        console.print(f"  - {target}")
    if not execute:
        console.print("Run with --execute to break it, run the startup and check the recovery.")
        return
    log_to_stderr()
    try:
        result = asyncio.run(drills.run(cfg, name, progress, execute=True))
    except drills.DrillRefused as err:
        fail(f"drill {name} refused, nothing was broken: {err}", code=EXIT_REFUSED)
    except (RunInProgress, StoreError, KubeError) as err:
        fail(f"drill {name} could not run: {err}")
    for check in result.checks:
        mark = "[green]✓[/green]" if check.ok else "[red]✗[/red]"
        console.print(f"  {mark} {check.name}" + (f" [dim]({shown(check.detail)})[/dim]" if check.detail else ""))
    if result.error:
        console.print(f"  [red]the drill did not finish: {shown(result.error)}[/red]")
    if result.restored:
        console.print("  restored what the drill broke: " + shown(", ".join(result.restored)))
    timings = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in result.timings.items())
    verdict = "[bold green]PASS[/bold green]" if result.passed else "[bold red]FAIL[/bold red]"
    console.print(f"drill {name}: {verdict} ({timings})")
    sys.exit(EXIT_SUCCESS if result.passed else EXIT_FAILED)


def main() -> None:
    cli(prog_name="hecate")
