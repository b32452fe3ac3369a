"""``lrtune serve`` as a user runs it: a real process on 127.0.0.1 with its real worker child,
stopped with real signals; and the README's demo entry point (``--submit ... --exit-when-done``)
on a tiny job."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from lrtune.jobs import JobStore

TINY_JOB = {
    "name": "serve-demo-tiny",
    "model": {"name": "logreg"},
    "dataset": {"name": "wine"},
    "batch_size": 32,
    "range_test": {"seeds": 2, "num_iter": 40},
    "search": {"n_trials": 2, "epochs": 2, "families": ["cosine"], "confirm_seeds": 2},
}


REPO = Path(__file__).resolve().parents[1]
CONSOLE_SCRIPT = Path(sys.executable).with_name("lrtune")
"""``lrtune`` as a user runs it: the console entry point beside the interpreter."""


class Service:
    """``lrtune serve ...`` in a child process, its stderr read line by line."""

    def __init__(
        self,
        args: list[str],
        tmp_path: Path,
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        inherited = {k: v for k, v in os.environ.items() if k != "LRTUNE_API_TOKEN"}
        environment = {**inherited, "OMP_NUM_THREADS": "1", **(env or {})}
        launcher = launcher or [sys.executable, "-m", "lrtune.cli"]
        self.process = subprocess.Popen(
            [*launcher, "serve", *args],
            cwd=tmp_path,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout_s: float = 120) -> re.Match[str]:
        """The first stderr line (seen or to come) matching ``pattern``."""
        for line in self.seen:
            if match := re.search(pattern, line):
                return match
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(self.seen)}")

    def stderr(self) -> str:
        self._reader.join(timeout=30)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return "".join(self.seen)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def services(tmp_path: Path) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is still signalable: it is gone once its /proc entry says so.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def wait_gone(pid: int, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return False


def start_idle(services: list[Service], tmp_path: Path) -> tuple[Service, str, int]:
    """A service on a free port with one embedded worker that has started; its URL, the
    worker's pid."""
    service = Service(["--port", "0", "--database", f"sqlite:///{tmp_path / 'jobs.db'}"], tmp_path)
    services.append(service)
    url = service.wait_for(r"dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
    pid = int(service.wait_for(r"embedded worker\(s\), pid (\d+)").group(1))
    service.wait_for(r"event=started")  # the worker is in its loop (torch imported)
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"worker" in command and not any(b"jobs.db" in part for part in command)  # no URL
    assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    return service, url, pid


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_api_and_its_worker(
    services: list[Service], tmp_path: Path, signum: int
) -> None:
    service, url, worker_pid = start_idle(services, tmp_path)
    assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
    service.process.send_signal(signum)
    assert service.process.wait(timeout=90) == 0
    stderr = service.stderr()
    assert f"event=worker_stopped pid={worker_pid} status=0" in stderr, stderr
    assert "Traceback" not in stderr
    assert not alive(worker_pid)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/healthz", timeout=5)


def test_a_killed_server_leaves_no_orphan_worker(services: list[Service], tmp_path: Path) -> None:
    service, _, worker_pid = start_idle(services, tmp_path)
    service.process.kill()  # no chance to clean up: the worker's parent-death signal does
    service.process.wait()
    try:
        assert wait_gone(worker_pid), f"worker {worker_pid} outlived its server"
    finally:
        if alive(worker_pid):
            os.kill(worker_pid, signal.SIGKILL)


def test_serve_in_the_clones_parent_starts_a_worker_of_the_installed_lrtune(
    services: list[Service], tmp_path: Path
) -> None:
    (tmp_path / "lrtune").symlink_to(REPO)  # the clone's parent: it holds the clone, lrtune/
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    service = Service(
        ["--port", "0", "--database", database], tmp_path, launcher=[str(CONSOLE_SCRIPT)]
    )
    services.append(service)
    url = service.wait_for(r"dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
    outcome = service.wait_for(r"event=(started|worker_exited)").group(1)
    assert outcome == "started", service.stderr()
    ready = httpx.get(f"{url}/readyz", timeout=30).json()
    assert ready["embedded_workers"] == ready["embedded_workers_running"] == 1


def test_readyz_and_the_dashboard_say_when_the_embedded_worker_is_dead(
    services: list[Service], tmp_path: Path
) -> None:
    service, url, worker_pid = start_idle(services, tmp_path)
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["embedded_workers_running"] == 1
    os.kill(worker_pid, signal.SIGKILL)
    service.wait_for(rf"event=worker_exited pid={worker_pid}")
    ready = httpx.get(f"{url}/readyz", timeout=30)
    assert ready.status_code == 503, ready.text
    body = ready.json()
    assert body["status"] == "unavailable" and body["embedded_workers_running"] == 0
    assert body["detail"].startswith(
        f"1 of lrtune serve's 1 embedded worker(s) exited (pid {worker_pid} status -9): "
        "queued jobs wait"
    )
    page = httpx.get(f"{url}/", timeout=30).text  # every page shows /readyz's detail
    assert 'id="service-warning"' in page and 'src="/ui/health.js"' in page
    script = httpx.get(f"{url}/ui/health.js", timeout=30)
    assert script.status_code == 200 and "/readyz" in script.text


def test_no_worker_serves_the_api_alone(services: list[Service], tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    service = Service(["--port", "0", "--no-worker", "--database", database], tmp_path)
    services.append(service)
    url = service.wait_for(r"dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
    service.wait_for(r"no embedded worker")
    job = httpx.post(f"{url}/v1/jobs", json=TINY_JOB, timeout=30).json()
    time.sleep(2)  # nobody works on it
    assert httpx.get(f"{url}/v1/jobs/{job['id']}", timeout=30).json()["status"] == "queued"
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=60) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without a token: set LRTUNE_API"),
        (["--exit-when-done"], "--exit-when-done needs --submit JOB"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--submit", "missing.yaml"], "job file not found: missing.yaml"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LRTUNE_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "lrtune.cli", "serve", "--port", "0", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tmp_path / "lrtune.db").exists()  # refused before opening anything


def test_a_non_loopback_bind_with_a_token_needs_it_for_reads(
    services: list[Service], tmp_path: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'jobs.db'}"
    args = ["--host", "0.0.0.0", "--port", "0", "--no-worker", "--database", database]
    service = Service(args, tmp_path, env={"LRTUNE_API_TOKEN": "s3cret"})
    services.append(service)
    url = service.wait_for(r"dashboard at (http://127\.0\.0\.1:\d+)/").group(1)
    assert httpx.get(f"{url}/v1/jobs", timeout=30).status_code == 401
    authorized = {"authorization": "Bearer s3cret"}
    assert httpx.get(f"{url}/v1/jobs", headers=authorized, timeout=30).status_code == 200
    service.process.send_signal(signal.SIGTERM)
    assert service.process.wait(timeout=60) == 0


def test_the_demo_submits_over_http_and_exits_with_the_recommendation(tmp_path: Path) -> None:
    """The README's main command, as ``make demo`` runs it, on a tiny job."""
    job_file = tmp_path / "tiny.yaml"
    job_file.write_text(yaml.safe_dump(TINY_JOB))
    env = {k: v for k, v in os.environ.items() if k != "LRTUNE_API_TOKEN"}
    command = [sys.executable, "-m", "lrtune.cli", "serve", "--port", "0"]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--submit", str(job_file), "--exit-when-done"],
        cwd=tmp_path,  # the default store: ./lrtune.db
        env={**env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=240,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    url = re.search(r"dashboard at (http://127\.0\.0\.1:\d+)/", done.stderr).group(1)
    job_id = re.search(rf"submitted job (\S+): {re.escape(url)}/", done.stderr).group(1)
    assert f"{url}/v1/jobs/{job_id}" in done.stderr
    assert f"job {job_id}, written " in done.stdout  # as lrtune recommend prints it
    rec = JobStore(f"sqlite:///{tmp_path / 'lrtune.db'}").recommendation(job_id).recommendation
    assert f"recommended: {rec.best.describe}, " in done.stdout and rec.code in done.stdout
    assert "event=worker_stopped" in done.stderr and "status=0" in done.stderr
    assert (tmp_path / "lrtune.db").exists()
    print(f"demo entry point took {elapsed:.1f} s")
