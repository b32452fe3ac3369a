"""A fleet of lrtune agents on a Ray cluster: one :class:`~lrtune.agent.Agent` per GPU.

Needs ``ray`` (``pip install lrtune[ray]``); ``import lrtune`` never imports it, and this
module imports without it (:func:`launch_agents` then says what to install).

:func:`launch_agents` starts one Ray actor (:class:`AgentActor`) per agent, each holding
``gpus_per_agent`` GPUs (none on a cluster without GPUs) and ``cpus_per_agent`` CPUs, and
running an agent against a running lrtune service (``lrtune serve``) until it stops: with
``once`` (the default), as soon as the service has no work for it. It blocks until every
agent has stopped and returns the units each ran. Each agent trains on ``cuda`` when Ray gave
it a GPU (Ray sets its ``CUDA_VISIBLE_DEVICES``), else on ``cpu``, and registers as
``agent-ray-<host>-<index>-<pid>`` (``lrtune workers`` lists them).

Tasks are given as import paths (``"mypkg.train:task"``): each actor imports them itself, so
they must be importable on every node: an installed package, or a ``runtime_env`` that puts
them there (``{"env_vars": {"PYTHONPATH": "/shared/code"}}``, ``{"working_dir": "."}``,
see Ray's docs); a path that does not import fails the launch with its one-line reason.

Example:

    .. code-block:: python

        import ray
        from lrtune.integrations.ray import launch_agents

        ray.init(address="auto")  # the cluster; without ray.init, launch_agents calls it
        units = launch_agents(
            "http://lrtune.internal:8000", ["mypkg.train:task"], token="...", once=True
        )  # one agent per GPU, until no work is left

Stopping: ``Ctrl-C`` in the driver asks every agent to stop (its unit is handed back to the
service, queued again, at the epoch's end) and waits ``stop_timeout_s`` seconds for them
before killing the actors. ``once`` stops an agent once no job of its tasks is unfinished
(while another agent runs a job's range test or its last units, it waits for the job's
units); ``once=False`` keeps a standing fleet, stopped with ``Ctrl-C``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

try:
    import ray
except ImportError:  # importable without ray (``pytest --doctest-modules`` collects it)
    ray = None  # type: ignore[assignment]

logger = logging.getLogger("lrtune.integrations.ray")

__all__ = ["AgentActor", "agent_id", "launch_agents"]


def _need_ray() -> None:
    if ray is None:
        from lrtune.exceptions import LRTuneError

        raise LRTuneError("lrtune.integrations.ray needs ray: pip install 'lrtune[ray]'")


def agent_id(index: int, host: str | None = None, pid: int | None = None) -> str:
    """The id the ``index``-th agent of a launch registers with (the pid keeps two launches on
    one node apart; at most 64 characters, as the workers table wants)."""
    host = (host or socket.gethostname())[:36]
    return f"agent-ray-{host}-{index}-{os.getpid() if pid is None else pid}"


class AgentActor:
    """One agent in a Ray actor (``ray.remote(AgentActor)``; :func:`launch_agents` makes them).

    ``run`` works until the agent stops and returns the units it ran; ``stop`` (callable while
    ``run`` runs: the actor takes two calls at once) asks it to stop at the epoch's end, its
    unit handed back to the service.
    """

    def __init__(
        self,
        url: str,
        tasks: Sequence[str],
        *,
        index: int = 0,
        token: str | None = None,
        job_id: str | None = None,
        max_units: int | None = None,
        once: bool = True,
        device: str | None = None,
    ) -> None:
        from lrtune.agent import Agent
        from lrtune.client import Client
        from lrtune.training import clear_stop_request
        from lrtune.workers.tasks import load_named

        clear_stop_request()  # a stop is per process: this actor's own
        if device is None:
            device = "cuda" if ray.get_gpu_ids() else "cpu"
        self._client = Client(url, token=token)
        self.agent = Agent(
            self._client,
            load_named(tasks),
            device=device,
            job_id=job_id,
            max_units=max_units,
            once=once,
            agent_id=agent_id(index),
        )

    def info(self) -> dict[str, Any]:
        """The agent's id and device, and the node it runs on."""
        return {"id": self.agent.id, "device": self.agent.device, "host": socket.gethostname()}

    def run(self) -> int:
        """Run the agent until it stops; the units it ran."""
        try:
            return self.agent.run()
        finally:
            self._client.close()

    def stop(self) -> None:
        """Ask the agent to stop (as SIGTERM does ``lrtune agent``)."""
        from lrtune.training import request_stop

        request_stop()


def launch_agents(
    url: str,
    tasks: Sequence[str],
    *,
    token: str | None = None,
    agents: int | None = None,
    gpus_per_agent: float = 1.0,
    cpus_per_agent: float = 1.0,
    once: bool = True,
    job_id: str | None = None,
    max_units: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
    stop_timeout_s: float = 60.0,
) -> list[int]:
    """Serve the lrtune service at ``url`` with ``agents`` agents on the Ray cluster; block
    until they have all stopped and return the units each ran (see the module).

    Args:
        url: the service's base URL, reachable from every node.
        tasks: the tasks' import paths (``"mypkg.train:task"``), importable on every node.
        token: the service's API token.
        agents: how many (default: one per GPU of the cluster, or one without GPUs).
        gpus_per_agent: GPUs each actor holds (fractions share a GPU); none without GPUs.
        cpus_per_agent: CPUs each actor holds.
        once: each agent stops when the service has no work for it.
        job_id: work on this job only.
        max_units: each agent stops after this many units.
        runtime_env: the actors' Ray ``runtime_env`` (e.g. a ``PYTHONPATH`` for the tasks).
        stop_timeout_s: after ``Ctrl-C``, how long the agents get to hand their units back.
    """
    _need_ray()
    if isinstance(tasks, str):
        tasks = [tasks]
    if not tasks:
        from lrtune.exceptions import InvalidInputError

        raise InvalidInputError("launch_agents needs a task to run: ['package.module:task']")
    if not ray.is_initialized():
        ray.init()
    gpus = float(ray.cluster_resources().get("GPU", 0))
    if agents is None:
        agents = int(gpus) or 1
    options: dict[str, Any] = {
        "num_gpus": gpus_per_agent if gpus else 0,
        "num_cpus": cpus_per_agent,
        "max_concurrency": 2,  # run, and stop while it runs
    }
    if runtime_env is not None:
        options["runtime_env"] = dict(runtime_env)
    remote = ray.remote(AgentActor).options(**options)
    actors = [
        remote.remote(url, list(tasks), index=i, token=token, job_id=job_id,
                      max_units=max_units, once=once)
        for i in range(agents)
    ]  # fmt: skip
    runs = [actor.run.remote() for actor in actors]
    try:
        return list(ray.get(runs))
    except KeyboardInterrupt:
        logger.info("event=stopping agents=%d", len(actors))
        try:
            ray.get([actor.stop.remote() for actor in actors], timeout=stop_timeout_s)
            ray.wait(runs, num_returns=len(runs), timeout=stop_timeout_s)
        except Exception as exc:  # the actors are killed below all the same
            logger.warning("event=stop_incomplete error=%s", exc)
        raise
    finally:
        for actor in actors:
            ray.kill(actor)
