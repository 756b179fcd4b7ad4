"""``hecate lab up|status|down|...``: the testbed for people (tests use ``hecate_lab`` directly).

The product's CLI offers this group as ``hecate lab`` through the ``hecate.commands`` entry point
this distribution registers (see hecate-lab/pyproject.toml); the product never imports it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from hecate_lab import DEFAULT_DIR

if TYPE_CHECKING:
    from hecate_lab.nodes import LabNode

dir_option = click.option(
    "--dir", "directory", type=click.Path(path_type=Path), envvar="HECATE_LAB_DIR",
    default=DEFAULT_DIR, show_default=True, help="Lab directory (state, logs, generated hecate.yaml).",
)


@click.group()
def lab() -> None:
    """Bring the lab (real upsd + sshd nodes + emulated API) up and down."""


@lab.command()
@dir_option
@click.option("--ups", "ups_names", multiple=True, default=("pyrphoros",), show_default=True,
              help="UPS name; repeat for several UPSes.")
@click.option("--servers", default=1, show_default=True, type=click.IntRange(1, 50))
@click.option("--agents", default=2, show_default=True, type=click.IntRange(0, 500))
@click.option("--netns/--loopback", default=None,
              help="Nodes in network namespaces (default when root) or on loopback ports.")
@click.option("--machines", is_flag=True,
              help="Nodes are booted systemd machines (real sshd, sudo, k3s units, power-off); root, systemd-nspawn.")
@click.option("--coordinator", is_flag=True,
              help="The coordinator is a machine too (titan-db), ready to install Hecate in; needs --machines.")
@click.option("--host", "hosts", multiple=True, metavar="NAME",
              help="A machine outside the cluster (e.g. nas), in hecate.yaml's hosts:; repeat for several.")
def up(directory: Path, ups_names: tuple[str, ...], servers: int, agents: int, netns: bool | None,
       machines: bool, coordinator: bool, hosts: tuple[str, ...]) -> None:
    """Start a lab and write DIR/hecate.yaml pointing Hecate at it."""
    import shlex

    from hecate_lab import machines as machines_mod
    from hecate_lab.procs import LabError
    from hecate_lab.testbed import Lab, LabSpec

    if coordinator and not machines:
        raise click.UsageError("--coordinator needs --machines")
    try:
        started = Lab.up(directory, LabSpec(ups=ups_names, servers=servers, agents=agents, netns=netns,
                                            machines=machines, coordinator=coordinator, hosts=hosts), detach=True)
    except (LabError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"lab {started.id} is up in {directory}")
    click.echo(f"  config:     {started.config_path}")
    click.echo(f"  kubeconfig: {started.kubeconfig}")
    if started.coordinator is not None:
        c = started.coordinator
        click.echo(f"  coordinator machine {c.name} at {c.address} (root {started.coordinator_root})")
        click.echo(f"    enter:    nsenter -t {machines_mod.pid1(c)} -a bash   (its pid 1: hecate lab status)")
        click.echo(f"    install:  {shlex.join(started.coordinator_install_argv())}")
    click.echo(f"  stop with:  hecate lab down --dir {directory}")


@lab.command()
@dir_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(directory: Path, as_json: bool) -> None:
    """Show what the lab's UPSes, nodes and API are doing."""
    from hecate_lab.procs import LabError
    from hecate_lab.testbed import Lab

    try:
        info = Lab.load(directory).status()
    except LabError as err:
        raise click.ClickException(str(err)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"lab {info['id']} in {info['dir']} ({info['mode']})")
    click.echo("UPS:")
    for name, u in info["ups"].items():
        click.echo(
            f"  {name:<12} {u['address']:<28} status={u['ups.status'] or '-':<12} "
            f"runtime={u['battery.runtime'] or '-'}s charge={u['battery.charge'] or '-'}% "
            f"load={u['ups.load'] or '-'}%"
        )
    click.echo("Nodes:")
    for n in info["nodes"]:
        services = ", ".join(f"{k}={v}" for k, v in n.get("services", {}).items())
        click.echo(
            f"  {n['name']:<12} {n['role']:<6} {n['address']:<21} power={n.get('power', '?'):<3} "
            f"{services:<20} sshd={'up' if n['sshd_alive'] else 'down'}"
        )
    coordinator = info.get("coordinator")
    if coordinator:
        click.echo(f"Coordinator machine: {coordinator['name']} {coordinator['address']} "
                   f"{'running, pid1 ' + str(coordinator['pid1']) if coordinator['pid1'] else 'off'}")
    api = info["api"]
    click.echo(f"API: {api['url'] or '-'} ({'up' if api['alive'] else 'down'})")
    click.echo(f"Hecate config: {info['config']}")


@lab.command()
@dir_option
def down(directory: Path) -> None:
    """Stop every lab process by PID and remove its namespaces and bridge."""
    from hecate_lab.procs import LabError
    from hecate_lab.testbed import Lab

    try:
        running = Lab.load(directory)
    except LabError as err:
        click.echo(str(err))
        return
    try:
        running.down()
    except LabError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"lab {running.id} in {directory} is down")


@lab.command("ups-set")
@dir_option
@click.argument("name")
@click.argument("assignments", nargs=-1, required=True, metavar="VAR=VALUE...")
def ups_set(directory: Path, name: str, assignments: tuple[str, ...]) -> None:
    """Change what a lab UPS reports, e.g. ups.status="OB DISCHRG" battery.runtime=240."""
    from hecate_lab.procs import LabError
    from hecate_lab.testbed import Lab

    changes = {}
    for item in assignments:
        var, sep, value = item.partition("=")
        if not sep or not var:
            raise click.BadParameter(f"{item!r} is not VAR=VALUE", param_hint="assignments")
        changes[var] = value
    try:
        ups = Lab.load(directory).ups[name]
    except KeyError:
        raise click.ClickException(f"the lab has no UPS named {name!r}") from None
    except LabError as err:
        raise click.ClickException(str(err)) from None
    ups.set_vars(changes)
    click.echo(f"{name}: upsd now serves " + ", ".join(f"{k}={v}" for k, v in changes.items()))


@lab.command("power-on")
@dir_option
@click.argument("names", nargs=-1, metavar="[NODE...]")
@click.option("--k3s-disabled", is_flag=True,
              help="Boot with the k3s unit inactive (disabled at boot), so `hecate startup` orders the start. "
                   "Machines always boot so: their units are disabled at boot.")
def power_on(directory: Path, names: tuple[str, ...], k3s_disabled: bool) -> None:
    """Boot lab nodes (all of them by default, the coordinator machine too), as when mains returns."""
    from concurrent.futures import ThreadPoolExecutor

    from hecate_lab import machines, nodes
    from hecate_lab.procs import LabError
    from hecate_lab.testbed import Lab

    try:
        running = Lab.load(directory)
        unknown = sorted(set(names) - {n.name for n in running.hosts})
        if unknown:
            raise click.ClickException(f"the lab has no node named {', '.join(unknown)}")
        chosen = [n for n in running.hosts if not names or n.name in names]
        with ThreadPoolExecutor(max(1, len(chosen))) as pool:  # machines boot at the same time
            booted = {n.name: n for n in pool.map(
                lambda n: machines.power_on(n) if n.machine else nodes.power_on(n, k3s_at_boot=not k3s_disabled),
                chosen)}
        running.nodes = [booted.get(n.name, n) for n in running.nodes]
        running.outside = [booted.get(n.name, n) for n in running.outside]
        if running.coordinator is not None:
            running.coordinator = booted.get(running.coordinator.name, running.coordinator)
        running.save()
    except LabError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"booted {', '.join(booted)}" + (" (k3s disabled at boot)" if k3s_disabled else ""))


def _run_inside(node: LabNode, argv: list[str]) -> None:
    """Run ``argv`` as root inside a running lab machine, output to the terminal; exit with its code."""
    import subprocess
    import sys

    from hecate_lab import machines

    pid = machines.pid1(node)
    if pid is None:
        raise click.ClickException(f"lab machine {node.name} is not running")
    rc = subprocess.run([machines.NSENTER, "-t", str(pid), "-a", *argv], env=machines.MACHINE_ENV,
                        check=False).returncode
    sys.exit(128 - rc if rc < 0 else rc)  # killed by a signal: the shell's 128 + N


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@dir_option
@click.argument("name")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(directory: Path, name: str, argv: tuple[str, ...]) -> None:
    """Run a command as root inside a lab machine (``nsenter`` into its PID 1, the machine's own environment);
    exits with the command's exit code. E.g. ``hecate lab exec titan-db -- systemctl status hecate``."""
    from hecate_lab.testbed import Lab

    node = next((n for n in Lab.load(directory).hosts if n.name == name), None)
    if node is None or not node.machine:
        raise click.ClickException(f"the lab has no machine named {name}")
    _run_inside(node, list(argv))


@lab.command("install", context_settings={"ignore_unknown_options": True})
@dir_option
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def install(directory: Path, extra: tuple[str, ...]) -> None:
    """Install Hecate in the coordinator machine with host/install.sh, offline from the bound wheelhouse, NUT
    managed with the lab UPS's dummy-ups file as its device (extra arguments go to install.sh)."""
    from hecate_lab.testbed import Lab

    running = Lab.load(directory)
    if running.coordinator is None:
        raise click.ClickException("this lab has no coordinator machine (lab up --machines --coordinator)")
    _run_inside(running.coordinator, running.coordinator_install_argv(*extra))


@lab.command()
@dir_option
def seed(directory: Path) -> None:
    """Create workloads, a blocking PDB and Flux objects in the lab API (for shutdown and startup); waits until
    the lab's simulator has made them healthy."""
    from hecate_lab import cluster_seed
    from hecate_lab.procs import LabError
    from hecate_lab.testbed import Lab

    try:
        running = Lab.load(directory)
        seeded = cluster_seed.seed_workloads(running.kubeconfig)
    except LabError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"seeded, and healthy: {', '.join(seeded.workloads)}; {seeded.blocked_pod} on {seeded.blocked_node} "
               f"(its PDB blocks eviction); {seeded.git_repository} served by {seeded.gitea}; "
               f"{', '.join(seeded.flux_active)}; {', '.join(seeded.flux_user_suspended)} (suspended by a user); "
               f"lost on a cold start: {', '.join(seeded.lost_on_cold_start)}")


@lab.command()
@dir_option
def timeline(directory: Path) -> None:
    """Print what happened in the lab, in order: UPS changes, node commands, the emulated cluster's events (API
    up/down, cold start, workloads, Flux), Hecate's runs, the coordinator's power-off."""
    from hecate_lab.procs import LabError
    from hecate_lab.testbed import Lab
    from hecate_lab.testbed import timeline as lab_timeline

    try:
        rows = lab_timeline(Lab.load(directory))
    except LabError as err:
        raise click.ClickException(str(err)) from None
    if not rows:
        click.echo("nothing happened yet")
        return
    start = rows[0][0]
    for t, who, what in rows:
        click.echo(f"+{t - start:7.2f}s  {who:<12} {what}")
