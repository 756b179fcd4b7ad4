"""The connection to the API: kubeconfig, threads, timeouts, the cool-down, error translation.

Why this module exists: every Kubernetes operation (``flux``, ``workloads``, ``nodes``,
``objects``, ``powerpolicy``) is built on :class:`Transport`, so that each one has the same
bounds and the same errors (``hecate.adapters.kube.errors``).

The official ``kubernetes`` client is blocking, so every call runs in a thread
(:func:`asyncio.to_thread`) with ``_request_timeout`` = ``cluster.api_timeout_s`` (one bound
for connect + response) and no urllib3 retries, so one call costs at most one timeout.
Responses are read as plain JSON (``_preload_content=False``): Hecate needs a few fields, and
a generated model that lags behind the server must not fail a shutdown. A cancelled call's
thread finishes by itself within that timeout. Patches are JSON merge patches
(``application/merge-patch+json``), which built-in and custom resources both accept. The
kubeconfig is read on first use, so it may be absent when the client is built, and again
after the API was unreachable (the lab and some clusters come back on a new address).

After an :class:`~hecate.adapters.kube.errors.ApiUnavailable` the transport
**short-circuits** later calls for a cool-down: they raise ``ApiUnavailable`` at once,
without touching the network, so a dead API costs one timeout per cool-down rather than one
per step; the first call after the cool-down tries again (and reloads the kubeconfig). The
cool-down starts short (:data:`FIRST_COOLDOWN_S`) and doubles with every consecutive failure
up to ``cooldown``; a call that succeeds resets it -- an API back after a blip of a few
seconds is found within a second, a dead one is tried at most every ``cooldown`` seconds.
Every ``ApiUnavailable`` says in ``retry_after`` when the network will be tried again, for
callers that retry. ``writes`` counts the mutating requests sent: a dry-run must leave it at
zero.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Self

import urllib3
import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.config.config_exception import ConfigException

from hecate.adapters.kube.errors import ApiUnavailable, KubeError, KubeNotFound

log = logging.getLogger(__name__)

COOLDOWN_S = 2.0
"""The longest cool-down: while the API stays unreachable, calls fail fast for up to this long (short
enough that a shutdown step retrying an API blip still tries near the end of its window)."""
FIRST_COOLDOWN_S = 0.5
"""The cool-down after the first failure (doubled on each consecutive one, up to the cap)."""
EVICTION_RETRY_S = 1.0
"""How often a drain retries an eviction a PodDisruptionBudget refused."""
MERGE_PATCH = "application/merge-patch+json"


class Transport:
    """One kubeconfig, one HTTP client shared by every call, one cool-down."""

    def __init__(self, kubeconfig: Path, timeout: float, *, cooldown: float = COOLDOWN_S,
                 retry_interval: float = EVICTION_RETRY_S, context: str | None = None) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.timeout = float(timeout)
        self.cooldown = float(cooldown)
        self.retry_interval = float(retry_interval)
        self.context = context
        self.writes = 0
        """Mutating requests sent (patches, creations, deletions, evictions), successful or not."""
        self._client: kclient.ApiClient | None = None
        self._client_lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""
        self._failures = 0
        """Consecutive calls that found the API unreachable (the cool-down grows with them)."""
        self._warned: set[str] = set()
        """Warnings given once per client (e.g. node Leases that cannot be read)."""
        self._served_versions: dict[str, str] = {}
        """Kind -> the version the API serves, for kinds with several (found once, see ``flux``)."""

    def close(self) -> None:
        """Drop the HTTP connections (the client is rebuilt on the next call)."""
        with self._client_lock:
            api, self._client = self._client, None
        if api is not None:
            api.close()  # type: ignore[no-untyped-call]

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _configuration(self) -> kclient.Configuration:
        """The kubeconfig, read now; ApiUnavailable if it is missing or unusable."""
        if not self.kubeconfig.is_file():
            raise ApiUnavailable(f"kubeconfig {self.kubeconfig} does not exist")
        cfg = kclient.Configuration()
        try:
            kconfig.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=str(self.kubeconfig), context=self.context,
                client_configuration=cfg, persist_config=False)
        except (ConfigException, OSError, yaml.YAMLError, ValueError, KeyError, TypeError) as err:
            raise ApiUnavailable(f"cannot use kubeconfig {self.kubeconfig}: {err}") from err
        return cfg

    def _api(self) -> kclient.ApiClient:
        with self._client_lock:
            if self._client is None:
                cfg = self._configuration()
                cfg.retries = 0  # one call, one timeout: no silent urllib3 retries
                self._client = kclient.ApiClient(cfg)
            return self._client

    def _request(self, api_class: type, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """In a worker thread: one API call, its JSON body decoded (None when empty)."""
        fn: Callable[..., Any] = getattr(api_class(self._api()), method)
        rsp = fn(*args, _request_timeout=self.timeout, _preload_content=False, **kwargs)
        try:
            data = rsp.data
        finally:
            rsp.release_conn()
        return json.loads(data) if data else None

    async def _call(self, what: str, api_class: type, method: str, *args: Any, write: bool = False,
                    server_error_is_unavailable: bool = True, **kwargs: Any) -> Any:
        """Run one API call in a thread, translating every failure into a KubeError.

        A 5xx answer is :class:`ApiUnavailable` (and starts the cool-down) unless
        ``server_error_is_unavailable`` is false: the Eviction API answers 500 for a
        request it will never accept (a pod under two PodDisruptionBudgets).
        """
        now = time.monotonic()
        if now < self._down_until:
            raise ApiUnavailable(f"{what}: API unavailable ({self._down_reason}); not retried for another "
                                 f"{self._down_until - now:.1f}s", retry_after=self._down_until - now)
        if write:
            self.writes += 1
        try:
            result = await asyncio.to_thread(self._request, api_class, method, args, kwargs)
        except ApiUnavailable as err:
            raise self._unavailable(f"{what}: {err}", None) from err
        except kclient.ApiException as err:
            status = int(err.status) if err.status else None
            message = f"{what}: {status} {_status_message(err)}"
            if status is not None and status >= 500 and server_error_is_unavailable:
                raise self._unavailable(message, status) from err
            self._failures = 0  # the API answered, if only to refuse
            if status == 404:
                raise KubeNotFound(message, status=status) from err
            raise KubeError(message, status=status) from err
        except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as err:
            raise self._unavailable(f"{what}: cannot reach the API: {_cause(err)}", None) from err
        except (json.JSONDecodeError, UnicodeDecodeError) as err:  # a body that is not JSON
            raise KubeError(f"{what}: unreadable answer from the API: {err}") from err
        self._failures = 0
        return result

    def _unavailable(self, message: str, status: int | None) -> ApiUnavailable:
        cooldown = min(self.cooldown, FIRST_COOLDOWN_S * 2 ** min(self._failures, 16))
        self._failures += 1
        self._down_until = time.monotonic() + cooldown
        self._down_reason = message
        with self._client_lock:  # reload the kubeconfig next time: the API may come back elsewhere
            api, self._client = self._client, None
        if api is not None:
            api.close()  # type: ignore[no-untyped-call]
        log.warning("Kubernetes API unavailable: %s (cool-down %.1fs)", message, cooldown)
        return ApiUnavailable(message, status=status, retry_after=cooldown)

    async def _patch(self, what: str, api_class: type, method: str, *args: Any, body: Mapping[str, Any]) -> Any:
        return await self._call(what, api_class, method, *args, body, write=True, _content_type=MERGE_PATCH)

    async def _raw(self, what: str, method: str, path: str, body: Any = None, *, write: bool = False,
                   content_type: str = "application/json") -> Any:
        """A call by URL path, for kinds without (or beyond) the generated client's typed methods."""
        return await self._call(what, _Raw, "request", method, path, body, write=write, _content_type=content_type)

    async def server_version(self) -> str:
        """The API server's ``gitVersion``: a cheap reachability probe."""
        data = await self._call("get version", kclient.VersionApi, "get_code")
        return str((data or {}).get("gitVersion") or "")


class _Raw:
    """A REST call by path, shaped like the generated API classes (see :meth:`Transport._raw`)."""

    def __init__(self, api: kclient.ApiClient) -> None:
        self.api = api

    def request(self, method: str, path: str, body: Any = None, *, _request_timeout: float,
                _preload_content: bool, _content_type: str = "application/json") -> Any:
        serialized = self.api.param_serialize(
            method, path, header_params={"Accept": "application/json", "Content-Type": _content_type},
            body=body, auth_settings=["BearerToken"])
        return self.api._call_with_legacy_options(serialized, {}, None, _preload_content, _request_timeout, True)


def _status_message(err: kclient.ApiException) -> str:
    """The API's own words from an error response (a v1 Status), else the HTTP reason."""
    try:
        body = json.loads(err.body or "")
    except (TypeError, ValueError):
        body = None
    if isinstance(body, dict):
        message = str(body.get("message") or "")
        reason = str(body.get("reason") or err.reason or "")
        return f"{reason}: {message}" if message else reason
    return str(err.reason or "no reason given")


def _cause(err: BaseException) -> str:
    """The innermost useful reason of a urllib3 error (MaxRetryError wraps the real one)."""
    reason = getattr(err, "reason", None)
    return str(reason) if isinstance(reason, BaseException) else str(err)
