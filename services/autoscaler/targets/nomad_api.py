"""The narrow client wrapper through which the Nomad target talks to Nomad.

:class:`NomadApi` is the only surface the target logic sees: five calls that
return Nomad's JSON as it comes (PascalCase keys, durations and times in
nanoseconds). :class:`PythonNomadApi` implements it over python-nomad; the
scale endpoints, which python-nomad has no method for, go through its generic
requester so that address, token, namespace and region apply to every call
alike. Its calls block, so they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from services.autoscaler.targets.base import TargetUnavailable

__all__ = ["JobState", "Json", "NomadApi", "NomadApiError", "PythonNomadApi"]

Json = dict[str, Any]
"""A decoded JSON object as Nomad sends it."""

T = TypeVar("T")

# The repository's nomad/ directory (job specs) shadows python-nomad for mypy and
# ruff, which resolve imports from the repository root; at run time the installed
# package wins over that namespace directory, so import it by name.
_nomad: Any = importlib.import_module("nomad")
_nomad_errors: Any = importlib.import_module("nomad.api.exceptions")


class NomadApiError(TargetUnavailable):
    """Nomad answered with an error status, or could not be reached (``status`` is None)."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(f"nomad answered {status}: {message}" if status else message)
        self.status = status
        """The HTTP status, or ``None`` when there was no answer."""
        self.message = message
        """Nomad's plain-text error body (or the transport error)."""


@dataclass(frozen=True)
class JobState:
    """The runtime state of one job, read in one go."""

    scale: Json
    """``GET /v1/job/:id/scale``: ``TaskGroups`` map with counts and scaling events."""
    deployment: Json | None
    """``GET /v1/job/:id/deployment``: the latest deployment, ``None`` if there never was one."""
    evaluations: list[Json]
    """``GET /v1/job/:id/evaluations``."""
    allocations: list[Json]
    """``GET /v1/job/:id/allocations`` (non-terminal and recent ones)."""


class NomadApi(Protocol):
    """The Nomad calls the target needs."""

    async def read_job(self, job_id: str) -> Json | None:
        """``GET /v1/job/:id``; ``None`` when the job does not exist."""
        ...

    async def job_state(self, job_id: str) -> JobState:
        """Scale status, latest deployment, evaluations and allocations of a job."""
        ...

    async def list_nodes(self) -> list[Json]:
        """``GET /v1/nodes``: node stubs (``Drain`` is a bool here)."""
        ...

    async def read_node(self, node_id: str) -> Json:
        """``GET /v1/node/:id``: the full node (``DrainStrategy``, ``Meta``)."""
        ...

    async def scale_job(self, job_id: str, body: Json) -> Json:
        """``POST /v1/job/:id/scale``; an error status raises :class:`NomadApiError`."""
        ...


class PythonNomadApi:
    """:class:`NomadApi` over python-nomad.

    Like the nomad CLI, python-nomad falls back to ``NOMAD_TOKEN``,
    ``NOMAD_REGION`` and ``NOMAD_NAMESPACE`` when those are not given.
    ``verify`` is True (check TLS certificates), False, or a CA bundle path;
    python-nomad's own default would not check them.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        namespace: str | None = None,
        region: str | None = None,
        timeout_s: float = 10.0,
        verify: bool | str = True,
    ) -> None:
        self._client = _nomad.Nomad(
            address=address.rstrip("/"),
            token=token,
            namespace=namespace,
            region=region,
            timeout=timeout_s,
            verify=verify,
        )

    async def read_job(self, job_id: str) -> Json | None:
        """See :meth:`NomadApi.read_job`."""
        try:
            job: Json = await self._run(self._client.job.get_job, job_id)
        except NomadApiError as exc:
            if exc.status == 404:
                return None
            raise
        return job

    async def job_state(self, job_id: str) -> JobState:
        """See :meth:`NomadApi.job_state`."""
        job = self._client.job
        scale: Json = await self._run(
            self._json, functools.partial(job.request, job_id, "scale", method="get")
        )
        deployment = await self._run(job.get_deployment, job_id)
        evaluations = await self._run(job.get_evaluations, job_id)
        allocations = await self._run(job.get_allocations, job_id)
        return JobState(scale, deployment, evaluations, allocations)

    async def list_nodes(self) -> list[Json]:
        """See :meth:`NomadApi.list_nodes`."""
        nodes: list[Json] = await self._run(self._client.nodes.get_nodes)
        return nodes

    async def read_node(self, node_id: str) -> Json:
        """See :meth:`NomadApi.read_node`."""
        node: Json = await self._run(self._client.node.get_node, node_id)
        return node

    async def scale_job(self, job_id: str, body: Json) -> Json:
        """See :meth:`NomadApi.scale_job`."""
        request = functools.partial(
            self._client.job.request, job_id, "scale", method="post", json=body
        )
        answer: Json = await self._run(self._json, request)
        return answer

    @staticmethod
    def _json(request: Callable[[], Any]) -> Any:
        """Sends a raw python-nomad request and decodes its body (in the worker thread)."""
        return request().json()

    @staticmethod
    async def _run(call: Callable[..., T], *args: Any) -> T:
        """Runs a blocking python-nomad call in a thread, mapping its errors."""
        try:
            return await asyncio.to_thread(call, *args)
        except _nomad_errors.BaseNomadException as exc:
            response = exc.nomad_resp
            status = getattr(response, "status_code", None)
            text = getattr(response, "text", None)
            message = text.strip() if isinstance(text, str) else str(response)
            raise NomadApiError(status, message) from exc
        except (OSError, ValueError) as exc:  # timeouts, resets, a body that is not JSON
            raise NomadApiError(None, f"nomad request failed: {exc}") from exc
