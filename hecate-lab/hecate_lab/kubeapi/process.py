"""Start and stop the lab API process from Python, and find it through its kubeconfig.

What the orchestrator (:mod:`hecate_lab.testbed`), the tests and the benchmarks use:
:func:`start_kubeapi` spawns ``python -m hecate_lab.kubeapi`` and returns once it serves,
:func:`stop_kubeapi` stops it, :func:`api_url` reads its URL from the kubeconfig, :func:`kubectl` runs the
real kubectl against it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

import yaml

from hecate_lab.kubeapi.errors import LabKubeApiError


def write_kubeconfig(path: str | os.PathLike[str], server_url: str) -> None:
    """Write a kubeconfig for the lab API atomically (temp file + rename), mode 0600."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "hecate-lab", "cluster": {"server": server_url}}],
        "users": [{"name": "hecate-lab", "user": {"token": "hecate-lab-dummy-token"}}],
        "contexts": [{"name": "hecate-lab", "context": {"cluster": "hecate-lab", "user": "hecate-lab"}}],
        "current-context": "hecate-lab",
        "preferences": {},
    }
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".kubeconfig-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def api_url(kubeconfig_path: str | os.PathLike[str]) -> str:
    """The API server URL of the kubeconfig's current context."""
    with open(kubeconfig_path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    context_name = config["current-context"]
    context = next(c["context"] for c in config["contexts"] if c["name"] == context_name)
    cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
    return str(cluster["server"])


def _version_answers(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=1.0)
    try:
        conn.request("GET", "/version")
        rsp = conn.getresponse()
        body = json.loads(rsp.read() or b"{}")
        if rsp.status == 503:  # serving, but the lab's k3s servers are down (rule 1)
            return bool(body.get("reason") == "ServiceUnavailable")
        return rsp.status == 200 and "gitVersion" in body
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _log_tail(log_path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def start_kubeapi(manifest_path: str | os.PathLike[str], kubeconfig_path: str | os.PathLike[str],
                  log_path: str | os.PathLike[str], *, port: int = 0, timeout: float = 15.0,
                  exit_with_parent: bool = True, extra_args: Iterable[str] = ()) -> subprocess.Popen[bytes]:
    """Spawn ``python -m hecate_lab.kubeapi`` and wait until it serves ``/version``.

    The kubeconfig is removed first and re-appears only once the server listens, so its
    presence is the readiness signal; its server URL carries the real port. The child's
    output goes to ``log_path`` (appended). On failure the child is killed and
    :class:`LabKubeApiError` carries the log's tail. With ``exit_with_parent`` the child
    stops by itself when this process dies, so a crashed test leaves nothing behind.
    """
    kubeconfig = Path(kubeconfig_path)
    log_file = Path(log_path)
    kubeconfig.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "hecate_lab.kubeapi", "--manifest", str(manifest_path),
            "--port", str(port), "--kubeconfig", str(kubeconfig), *extra_args]
    if exit_with_parent:
        argv += ["--parent-pid", str(os.getpid())]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = str(Path(__file__).resolve().parents[2])  # .../hecate-lab, holding hecate_lab/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    try:
        while True:
            rc = proc.poll()
            if rc is not None:
                raise LabKubeApiError(f"the lab API exited with status {rc} before serving")
            if kubeconfig.exists():
                with contextlib.suppress(OSError, KeyError, StopIteration, TypeError, yaml.YAMLError):
                    if _version_answers(api_url(kubeconfig)):
                        return proc
            if time.monotonic() > deadline:
                raise LabKubeApiError(f"the lab API did not serve /version within {timeout:g}s")
            time.sleep(0.05)
    except BaseException as e:
        _kill(proc)
        if isinstance(e, LabKubeApiError):
            raise LabKubeApiError(f"{e}; {log_file} ends with:\n{_log_tail(log_file)}") from None
        raise


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it, or it stays a zombie
        if reaped == pid:
            return False
    except ChildProcessError:
        pass  # not our child (or already reaped): probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_kubeapi(pid: int | subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Stop the lab API: SIGTERM, wait up to ``timeout`` seconds, then SIGKILL.

    Accepts a pid (of a child or of any process we may signal) or the Popen from
    :func:`start_kubeapi`. Returns once the process is gone; a gone pid is fine.
    """
    if isinstance(pid, subprocess.Popen):
        proc = pid
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _alive(pid)  # reap it if it is our zombie
        return
    for sig_deadline, sig in ((timeout, None), (5.0, signal.SIGKILL)):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + sig_deadline
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)
    raise LabKubeApiError(f"the lab API process {pid} does not die")


KUBECTL = "/usr/bin/kubectl"


def kubectl_command(kubeconfig_path: str | os.PathLike[str], *args: str) -> tuple[list[str], dict[str, str]]:
    """The real ``kubectl`` against the lab API: argv and environment (its cache beside the kubeconfig, not ~/.kube)."""
    kubeconfig = Path(kubeconfig_path)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(kubeconfig.parent),
           "KUBECONFIG": str(kubeconfig)}
    return [KUBECTL, "--cache-dir", str(kubeconfig.parent / ".kube-cache"), *args], env


def kubectl(kubeconfig_path: str | os.PathLike[str], *args: str,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run the real ``kubectl`` against the lab API and wait for it."""
    argv, env = kubectl_command(kubeconfig_path, *args)
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)
