"""What a Kubernetes call can fail with: every failure is a :class:`KubeError`.

Why this module exists: the services decide on the *kind* of failure -- a shutdown skips its
Kubernetes steps when the API is gone but fails a step the API refused -- so the adapter
translates every client, HTTP and socket error into one of these (``hecate.adapters.kube.transport``),
chained ``from`` the original.
"""

from __future__ import annotations

from typing import Any

from hecate.domain import text


class KubeError(Exception):
    """A Kubernetes call failed; ``status`` is the HTTP status, ``partial`` what was done.

    A refusal (401, 403, 409, 422, ...) is a plain KubeError with a readable message: the verb,
    the object, the status and the API's reason/message -- cleaned of control characters and
    capped (``hecate.domain.text``), since the API's words are not Hecate's to trust.
    """

    def __init__(self, message: str, *, status: int | None = None, partial: Any = None) -> None:
        super().__init__(text.clean(message))
        self.status = status
        self.partial = partial


class ApiUnavailable(KubeError):
    """The API cannot be reached (refused, reset, timeout, 5xx, no usable kubeconfig).

    ``retry_after``: seconds until the client will try the network again (its cool-down); a
    caller that retries waits at least that long, since an earlier call fails at once.
    """

    def __init__(self, message: str, *, status: int | None = None, partial: Any = None,
                 retry_after: float = 0.0) -> None:
        super().__init__(message, status=status, partial=partial)
        self.retry_after = retry_after


class KubeNotFound(KubeError):
    """The object (or its resource type) does not exist: HTTP 404."""
