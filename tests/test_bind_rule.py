"""The bind rule lives in the app: however the API is started (the README's uvicorn factory
too), a non-loopback ``LRTUNE_HOST`` needs ``LRTUNE_API_TOKEN``, and then reads need it too."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from lrtune.api import create_app
from lrtune.exceptions import InvalidInputError

TOKEN = "bind-rule-t0ken"
READS = ["/v1/jobs", "/v1/datasets/uploads", "/metrics", "/v1/models"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def uvicorn_factory(tmp_path: Path) -> Iterator[str]:
    """The README's way: ``uvicorn lrtune.api.main:create_app --factory``, told by
    ``LRTUNE_HOST`` that it is exposed (the test still binds loopback)."""
    port = free_port()
    env = {
        **os.environ,
        "LRTUNE_HOST": "0.0.0.0",
        "LRTUNE_API_TOKEN": TOKEN,
        "LRTUNE_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.db'}",
    }
    command = [sys.executable, "-m", "uvicorn", "lrtune.api.main:create_app", "--factory"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=5)
                break
            except httpx.TransportError:
                assert process.poll() is None, process.communicate()[1].decode()
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_reads_behind_the_uvicorn_factory_need_the_token_on_a_non_loopback_host(
    uvicorn_factory: str,
) -> None:
    with httpx.Client(base_url=uvicorn_factory, timeout=30) as http:
        for path in READS:
            refused = http.get(path)
            assert refused.status_code == 401, (path, refused.text)
            assert "Authorization: Bearer" in refused.json()["detail"]
            allowed = http.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
            assert allowed.status_code == 200, (path, allowed.text)
        assert http.get("/healthz").status_code == 200  # probes stay open


def test_the_app_refuses_a_non_loopback_host_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LRTUNE_HOST", "0.0.0.0")
    monkeypatch.setenv("LRTUNE_DATABASE_URL", f"sqlite:///{tmp_path / 'jobs.db'}")
    monkeypatch.delenv("LRTUNE_API_TOKEN", raising=False)
    with pytest.raises(InvalidInputError, match=r"refusing to serve on 0\.0\.0\.0 without a token"):
        create_app()
