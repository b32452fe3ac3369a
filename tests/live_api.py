"""The API under test over real HTTP: a uvicorn server on 127.0.0.1 in a background thread.

Also a finished job with a real recommendation, for the routes that read results.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from lrtune import __version__
from lrtune.jobs import JobRecord, JobStore, PluginRegistry, Provenance, WorkerRegistration
from lrtune.recommendation import Recommendation
from lrtune.spec import JobSpec


@contextlib.contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL; stop it on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2, ws="none"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def finish_with(store: JobStore, spec: JobSpec, recommendation: Recommendation) -> JobRecord:
    """Submit ``spec`` and take it to ``succeeded`` with ``recommendation``, as a worker would:
    under a lease, one state at a time, the recommendation written before the release."""
    job = store.submit(spec, reuse=False)
    lease = store.claim("test-worker", lease_s=60, job_id=job.id)
    assert lease is not None
    store.advance(lease, "searching")
    store.advance(lease, "confirming")
    provenance = Provenance(
        lrtune_version=__version__,
        rule="steepest",
        lr_min=recommendation.bounds.low,
        lr_max=recommendation.bounds.high,
        device="cpu",
        search=spec.search,
    )
    store.save_recommendation(job.id, recommendation, provenance, lease=lease)
    return store.release(lease, status="succeeded")


def register_plugin_worker(
    store: JobStore, models: dict[str, Any], worker_id: str = "plugin-box", device: str = "cpu"
) -> None:
    """A live worker in ``store`` whose plugin registry holds ``models`` (name -> params
    schema): a model the API accepts though no factory here builds or checks it."""
    store.register_worker(
        WorkerRegistration(
            id=worker_id,
            host=worker_id,
            device=device,
            pid=1,
            version="0.1.0",
            heartbeat_s=30,
            plugin_registry=PluginRegistry(models=models),
        )
    )
