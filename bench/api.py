"""The HTTP API's read latency and throughput at 32 concurrent clients, against a bare ceiling.

What it measures, in one run, on 127.0.0.1 only:

1. A job store (a fresh SQLite file, or ``--database``) with one real finished job: a tiny job
   (logistic regression on wine) submitted to the store and run by ``lrtune worker --once``,
   so ``GET /v1/recommendations`` answers from a stored recommendation.
2. Two servers, each its own process, with the same uvicorn settings (``--workers`` processes,
   ``--loop``, ``--http``, access log off): lrtune's API (``create_app()`` on that store), and
   the ceiling, a bare Starlette app whose one endpoint returns, as a ``JSONResponse``, the
   body the API answered for the endpoint under test (so both serialise the same JSON of the
   same size; the ceiling reads no database and validates nothing).
3. For each endpoint (``GET /v1/recommendations?fingerprint=``,
   ``GET /v1/recommendations?model=&dataset=``, ``GET /v1/jobs/{id}``, and
   ``GET /v1/jobs/{id}/finder`` when the API has it), ``--clients`` asyncio tasks on one
   ``httpx.AsyncClient`` (one keep-alive connection each) send requests in a closed loop for
   ``--seconds``, alternating ceiling and API ``--rounds`` times so that both see the same load
   on the machine. Reported: requests/s, p50 and p99 latency, errors, and the API's
   throughput as a share of the ceiling's. Targets: >= 50% of the ceiling, p99 < 25 ms.

The client runs in this process, on the same cores as the servers; on a small machine it is
a large part of what is measured (the report gives the load average at the start and the end).

Run:
    .venv/bin/python bench/api.py              # ~1-2 min: Markdown report on stdout
    .venv/bin/python bench/api.py --write      # ... and write docs/benchmark_api.md
    .venv/bin/python bench/api.py --quick      # one short round per endpoint, a smoke test
    .venv/bin/python bench/api.py --loop asyncio --http h11 --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmark_api.md"
ANALYSIS = "<!-- analysis: kept by --write -->"
TARGET_SHARE = 0.5
TARGET_P99_MS = 25.0
TINY_JOB = {
    "name": "bench-api",
    "model": {"name": "logreg"},
    "dataset": {"name": "wine"},
    "batch_size": 32,
    "range_test": {"seeds": 2, "num_iter": 40},
    "search": {"n_trials": 2, "epochs": 2, "families": ["cosine"], "confirm_seeds": 2},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", help="job store URL (default: a fresh SQLite file)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and side")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument(
        "--client",
        nargs="+",
        choices=["httpx", "raw"],
        default=["httpx", "raw"],
        help="httpx.AsyncClient and/or a minimal HTTP/1.1 client on asyncio streams (cheaper)",
    )
    parser.add_argument("--loop", default=_default("uvloop", "asyncio"))
    parser.add_argument("--http", default=_default("httptools", "h11"))
    parser.add_argument("--quick", action="store_true", help="one 2 s round per side")
    parser.add_argument(
        "--probes",
        action="store_true",
        help="also serve GET /v1/jobs/{id}'s body from a bare Starlette route and a FastAPI "
        "route with no dependencies in the same app: what limits it",
    )
    parser.add_argument("--write", action="store_true", help=f"write {DOC.relative_to(REPO)}")
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return _serve(args.serve[0], int(args.serve[1]), args)
    if args.quick:
        args.seconds, args.rounds = 2.0, 1
    report, rows = run(args)
    print(report)
    if args.write:
        kept = DOC.read_text().partition(ANALYSIS)[2] if DOC.exists() else "\n"
        DOC.write_text(f"{report}\n{ANALYSIS}{kept}")
        print(f"written to {DOC.relative_to(REPO)}", file=sys.stderr)
    print(json.dumps(headline(rows)))
    return 0


def headline(rows: list[Row]) -> dict[str, Any]:
    """The figures the targets name, for ``GET /v1/jobs/{id}``: its share of the ceiling and
    its p99 under the cheapest client measured (``raw`` when run: ``httpx`` measures itself)."""
    jobs = [row for row in rows if _label(row.endpoint) == "/v1/jobs/{id}"]
    row = min(jobs, key=lambda row: row.client != "raw")
    return {
        "job_get_vs_ceiling": round(row.api.rps / row.ceiling.rps, 3),
        "target": TARGET_SHARE,
        "job_get_p99_ms": round(row.api.percentile_ms(0.99), 1),
        "target_p99_ms": TARGET_P99_MS,
        "job_get_rps": round(row.api.rps),
        "ceiling_rps": round(row.ceiling.rps),
        "client": row.client,
        "load_average": round(os.getloadavg()[0], 2),
    }


def _default(module: str, fallback: str) -> str:
    return module if importlib.util.find_spec(module) else fallback


# --- the servers -------------------------------------------------------------------------


def ceiling_app() -> Any:
    """A bare Starlette app: every GET answers the JSON in ``$LRTUNE_BENCH_BODY`` (a file)."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    body = json.loads(Path(os.environ["LRTUNE_BENCH_BODY"]).read_text())

    async def answer(request: Any) -> JSONResponse:
        return JSONResponse(body)

    return Starlette(routes=[Route("/{path:path}", answer)])


PROBES = ("/probe/starlette/{job_id}", "/probe/fastapi/{job_id}")


def probes_app() -> Any:
    """The API app with two more routes, first in its routing, that serve the job's body as
    ``GET /v1/jobs/{id}`` does (serialized once, with its ETag), without the route's parts:
    ``/probe/starlette/{job_id}`` a bare Starlette route (the app's middleware, no FastAPI),
    ``/probe/fastapi/{job_id}`` a FastAPI route with no dependencies and an unvalidated id;
    neither reads the row's version. What limits ``GET /v1/jobs/{id}``, by subtraction.
    """
    from fastapi import Response
    from fastapi.routing import APIRoute
    from starlette.routing import Route

    from lrtune.api.cache import CachedBody
    from lrtune.api.main import create_app

    app = create_app()
    kept: dict[str, CachedBody] = {}

    def kept_body(job_id: str) -> CachedBody:
        if job_id not in kept:
            job = app.state.store.get().get(job_id)
            kept[job_id] = CachedBody.of(job.model_dump_json(by_alias=True).encode())
        return kept[job_id]

    async def starlette_probe(request: Any) -> Response:
        return kept_body(request.path_params["job_id"]).response(None)

    async def fastapi_probe(job_id: str) -> Response:
        return kept_body(job_id).response(None)

    app.router.routes.insert(0, Route(PROBES[0], starlette_probe))
    app.router.routes.insert(0, APIRoute(PROBES[1], fastapi_probe, methods=["GET"]))
    return app


def _serve(kind: str, port: int, args: argparse.Namespace) -> int:
    import uvicorn

    target = {
        "ceiling": "bench.api:ceiling_app",
        "probes": "bench.api:probes_app",
    }.get(kind, "lrtune.api.main:create_app")
    uvicorn.run(
        target,
        factory=True,
        host="127.0.0.1",
        port=port,
        workers=args.workers,
        loop=args.loop,
        http=args.http,
        access_log=False,
        log_level="warning",
        lifespan="off",
        ws="none",
    )
    return 0


@dataclass
class Server:
    kind: str
    url: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(kind: str, args: argparse.Namespace, env: dict[str, str]) -> Server:
    port = _free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, str(port)]
    command += ["--workers", str(args.workers), "--loop", args.loop, "--http", args.http]
    process = subprocess.Popen(
        command, cwd=REPO, env={**os.environ, **env, "PYTHONPATH": str(REPO)}
    )
    server = Server(kind, f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {kind} server exited with {process.returncode}")
        try:
            httpx.get(f"{server.url}/healthz", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the {kind} server did not start")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- the store with a finished job ------------------------------------------------------------


def finished_job(database: str) -> tuple[str, str]:
    """A job of ``TINY_JOB`` run to its recommendation by a real worker: (job id, fingerprint)."""
    from lrtune.jobs import JobStore
    from lrtune.spec import JobSpec

    store = JobStore(database)
    job = store.submit(JobSpec.model_validate(TINY_JOB))
    subprocess.run(
        [sys.executable, "-m", "lrtune.cli", "worker", "--once", "--database", database],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
    )
    job = store.get(job.id)
    if job.status.value != "succeeded":
        raise RuntimeError(f"the benchmark's job ended {job.status.value}: {job.error}")
    return job.id, job.fingerprint


# --- the load -------------------------------------------------------------------------------


@dataclass
class Side:
    """One server's figures on one endpoint, over its rounds."""

    latencies_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    errors: int = 0

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        if not ordered:
            return float("nan")
        return 1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def closed_loop(
    url: str, clients: int, seconds: float, side: Side, kind: str = "httpx"
) -> None:
    """``clients`` tasks, each sending the next request when the last one answered."""
    if kind == "raw":
        await _raw_closed_loop(url, clients, seconds, side)
        return
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        await asyncio.gather(*(client.get(url) for _ in range(clients)))  # open the connections
        deadline = time.perf_counter() + seconds

        async def one_client() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.get(url)
                if response.status_code == 200:
                    side.latencies_s.append(time.perf_counter() - started)
                else:
                    side.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        side.seconds += time.perf_counter() - started


async def _raw_closed_loop(url: str, clients: int, seconds: float, side: Side) -> None:
    """The same load from a minimal HTTP/1.1 client on asyncio streams (keep-alive, reads
    ``Content-Length`` bytes): a far cheaper client than httpx, so more of the machine is left
    to the server."""
    parsed = httpx.URL(url)
    target = parsed.raw_path.decode()
    request = f"GET {target} HTTP/1.1\r\nHost: {parsed.host}\r\n\r\n".encode()

    async def one_client(deadline: float) -> None:
        reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200"):
                    side.latencies_s.append(time.perf_counter() - started)
                else:
                    side.errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(one_client(deadline) for _ in range(clients)))
    side.seconds += time.perf_counter() - started


@dataclass
class Row:
    client: str
    endpoint: str
    body_bytes: int
    api: Side
    ceiling: Side


def measure(path: str, api: Server, args: argparse.Namespace, env: dict[str, str]) -> list[Row]:
    response = httpx.get(f"{api.url}{path}", timeout=30)
    response.raise_for_status()
    body_file = Path(env["LRTUNE_BENCH_BODY"])
    body_file.write_bytes(response.content)
    ceiling = start_server("ceiling", args, env)
    try:
        assert httpx.get(f"{ceiling.url}{path}").json() == response.json()
        rows = [Row(kind, path, len(response.content), Side(), Side()) for kind in args.client]
        for _ in range(args.rounds):
            for row in rows:
                for server, side in ((ceiling, row.ceiling), (api, row.api)):
                    url = f"{server.url}{path}"
                    asyncio.run(closed_loop(url, args.clients, args.seconds, side, row.client))
    finally:
        ceiling.stop()
    return rows


def run(args: argparse.Namespace) -> tuple[str, list[Row]]:
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        database = args.database or f"sqlite:///{Path(tmp) / 'jobs.db'}"
        job_id, fingerprint = finished_job(database)
        env = {"LRTUNE_DATABASE_URL": database, "LRTUNE_BENCH_BODY": str(Path(tmp) / "body")}
        api = start_server("api", args, env)
        try:
            paths = [
                f"/v1/recommendations?fingerprint={fingerprint}",
                "/v1/recommendations?model=logreg&dataset=wine",
                f"/v1/jobs/{job_id}",
            ]
            has_finder = httpx.get(f"{api.url}/v1/jobs/{job_id}/finder").status_code == 200
            if has_finder:
                paths.append(f"/v1/jobs/{job_id}/finder")
            rows = [row for path in paths for row in measure(path, api, args, env)]
        finally:
            api.stop()
        if args.probes:
            rows += measure_probes(job_id, args, env)
        steps = profile(database, job_id, fingerprint)
    text = report(rows, args, load_start, os.getloadavg(), has_finder, database, steps)
    return text, rows


def measure_probes(job_id: str, args: argparse.Namespace, env: dict[str, str]) -> list[Row]:
    """``GET /v1/jobs/{id}`` and the :func:`probes_app` routes, each against the ceiling."""
    server = start_server("probes", args, env)
    try:
        job_path = f"/v1/jobs/{job_id}"
        httpx.get(f"{server.url}{job_path}").raise_for_status()  # its body, kept
        paths = [job_path, *(probe.format(job_id=job_id) for probe in PROBES)]
        return [row for path in paths for row in measure(path, server, args, env)]
    finally:
        server.stop()


def _answer_ttl_s() -> float:
    """How long the API reuses a lookup's answer: its setting as the servers read it."""
    from lrtune.api import ApiSettings

    return ApiSettings.from_env().answer_ttl_s


def profile(database: str, job_id: str, fingerprint: str, repeats: int = 200) -> list[str]:
    """Where one lookup's time goes, in this process, with no HTTP: what a request does on the
    hot path (the answer noted for its question), what it does once per question and
    ``LRTUNE_ANSWER_TTL_S`` (the store's read of which answer is current, the cache's lookup of
    its body), and what a cache miss does once per answer (the store's read and validation,
    the serialisation); for ``GET /v1/jobs/{id}``, the read of the row's version and the body
    kept for it (every request), the record's read and serialisation (once a change), and the
    whole request through the app, from its lean route and through FastAPI
    (:func:`served_in_process`)."""
    from lrtune.api.cache import CachedBody, JobBodies, ResponseCache
    from lrtune.api.schemas import RecommendationMatch
    from lrtune.jobs import JobStore

    store = JobStore(database)
    stored = store.latest_recommendation(fingerprint)
    match = RecommendationMatch(match="fingerprint", stored=stored)
    body = match.model_dump(mode="json")
    cache = ResponseCache()
    served = cache.put(("fingerprint", job_id), match.model_dump_json().encode())
    question = ("fingerprint", fingerprint)
    cache.remember(question, job_id, served)
    job, version, bodies = store.get(job_id), store.row_versions.read(job_id), JobBodies()
    bodies.put(job_id, version, job.model_dump_json(by_alias=True).encode())
    steps = {
        "per request: `ResponseCache.recent` (the answer noted for the question)": lambda: (
            cache.recent(question, max_age_s=3600)
        ),
        "once a TTL: `JobStore.latest_recommendation_job` (one indexed SELECT of an id)": (
            lambda: store.latest_recommendation_job(fingerprint)
        ),
        "once a TTL: `ResponseCache.get` (the body's bytes and ETag)": lambda: cache.get(
            ("fingerprint", job_id)
        ),
        "per request (`/v1/jobs/{id}`): `RowVersions.read` (one indexed SELECT of the row's "
        "version)": lambda: store.row_versions.read(job_id),
        "per request (`/v1/jobs/{id}`): `JobBodies.get` (the body kept for that version)": (
            lambda: bodies.get(job_id, version)
        ),
        "once a change of the job's row: `JobStore.get` (SQL + `JobRecord` validation)": (
            lambda: store.get(job_id)
        ),
        "once a change of the job's row: `JobRecord.model_dump_json()` and its ETag": lambda: (
            CachedBody.of(job.model_dump_json(by_alias=True).encode())
        ),
        "once (a miss): `JobStore.recommendation` (SQL + `Recommendation` validation)": lambda: (
            store.recommendation(job_id)
        ),
        "once (a miss): `RecommendationMatch.model_dump_json()`": match.model_dump_json,
        "`json.dumps` of the same body (the ceiling's serialisation)": lambda: json.dumps(body),
    }
    lines = ["| step (in-process, no HTTP) | ms per call |", "|---|---:|"]
    for name, step in steps.items():
        step()
        started = time.perf_counter()
        for _ in range(repeats):
            step()
        lines.append(f"| {name} | {(time.perf_counter() - started) / repeats * 1000:.3f} |")
    for name, ms in served_in_process(database, job_id).items():
        lines.append(f"| {name} | {ms:.3f} |")
    return lines


def served_in_process(
    database: str, job_id: str, requests: int = 2000, rounds: int = 3
) -> dict[str, float]:
    """ms per ``GET /v1/jobs/{id}`` through the whole app in this process (ASGI calls, no
    HTTP): as built, from its lean route (``lrtune.api.routes._lean``), and with that route
    taken out of the app's routing, so that FastAPI handles the same declaration; the best of
    ``rounds``, the two alternated."""
    from starlette.routing import Route

    from lrtune.api import ApiSettings, create_app

    app = create_app(ApiSettings(database_url=database))
    lean = next(r for r in app.router.routes if type(r) is Route and r.name == "get_job")
    path = f"/v1/jobs/{job_id}"
    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"GET {path} in-process answered {message['status']}")

    async def per_request_ms() -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - started) / requests * 1000

    where = app.router.routes.index(lean)
    prefix = "per request (`/v1/jobs/{id}`): the whole app in-process (ASGI calls, no HTTP), "
    lean_name = prefix + "as served: its lean route"
    fastapi_name = prefix + "its FastAPI declaration serving it (the lean route taken out)"
    best = {lean_name: float("inf"), fastapi_name: float("inf")}
    for _ in range(rounds):
        best[lean_name] = min(best[lean_name], asyncio.run(per_request_ms()))
        app.router.routes.remove(lean)
        best[fastapi_name] = min(best[fastapi_name], asyncio.run(per_request_ms()))
        app.router.routes.insert(where, lean)
    return best


# --- the report -------------------------------------------------------------------------------


def report(
    rows: list[Row],
    args: argparse.Namespace,
    load_start: tuple[float, ...],
    load_end: tuple[float, ...],
    has_finder: bool,
    database: str,
    steps: list[str],
) -> str:
    import fastapi
    import starlette
    import uvicorn

    store = "PostgreSQL" if database.startswith("postgresql") else "SQLite (a fresh file)"
    lines = [
        "# HTTP API: read latency and throughput (bench/api.py)",
        "",
        f"Run {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, uvicorn "
        f"{uvicorn.__version__}, FastAPI {fastapi.__version__}, Starlette "
        f"{starlette.__version__}, httpx {httpx.__version__}. Load average "
        f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end.",
        "",
        f"Servers: one uvicorn process each ({args.workers} worker(s), loop `{args.loop}`, "
        f"http `{args.http}`, access log off, 127.0.0.1); the API with "
        f"`LRTUNE_ANSWER_TTL_S={_answer_ttl_s():g}`. Store: {store}, one finished job. "
        f"Load: {args.clients} concurrent clients, each with one keep-alive connection, closed "
        f"loop, {args.rounds} round(s) of {args.seconds:g} s per side, ceiling and API "
        "alternating; client `httpx`: asyncio tasks on one `httpx.AsyncClient`; client `raw`: "
        "a minimal HTTP/1.1 client on asyncio streams (much cheaper, so more of the CPU is left "
        "to the server). The client runs on the same cores as the server.",
        "",
        "| endpoint | body | client | side | req/s | p50 ms | p99 ms | errors | API / ceiling "
        "| met |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        share = row.api.rps / row.ceiling.rps if row.ceiling.rps else float("nan")
        met = share >= TARGET_SHARE and row.api.percentile_ms(0.99) < TARGET_P99_MS
        for name, side in (("ceiling", row.ceiling), ("API", row.api)):
            extra = f"{share:.0%} | {'yes' if met else 'no'}" if name == "API" else " | "
            lines.append(
                f"| `{_label(row.endpoint)}` "
                f"| {row.body_bytes / 1024:.1f} KiB | {row.client} | {name} | {side.rps:.0f} "
                f"| {side.percentile_ms(0.5):.1f} | {side.percentile_ms(0.99):.1f} "
                f"| {side.errors} | {extra} |"
            )
    lines += [
        "",
        f"Targets: the API's throughput >= {TARGET_SHARE:.0%} of the ceiling's and p99 < "
        f"{TARGET_P99_MS:g} ms at {args.clients} clients (which needs more than "
        f"{args.clients * 1000 / TARGET_P99_MS:,.0f} requests/s in a closed loop).",
    ]
    if not has_finder:
        lines.append("`GET /v1/jobs/{id}/finder` did not exist in this build: not measured.")
    if args.probes:
        lines.append(
            "The rows after `/v1/jobs/{id}/finder` (`--probes`): a second API process with two "
            "more routes that serve the job's body without the route's parts "
            "(`/probe/starlette/{id}`: a bare Starlette route in the app; `/probe/fastapi/{id}`: "
            "a FastAPI route with no dependencies; `bench.api.probes_app`), each against the "
            "ceiling, with `GET /v1/jobs/{id}` again on that process."
        )
    lines += ["", "Where a request's time goes, measured in this process after the load:", ""]
    lines += steps
    return "\n".join(lines) + "\n"


def _label(endpoint: str) -> str:
    """``/v1/jobs/{id}``, ``/v1/recommendations?fingerprint=..``: the endpoint, not the ids."""
    path, _, query = endpoint.partition("?")
    parts = path.split("/")
    if (len(parts) > 3 and parts[2] == "jobs") or parts[1] == "probe":
        parts[3] = "{id}"
    names = "&".join(part.split("=")[0] + "=.." for part in query.split("&")) if query else ""
    return "/".join(parts) + (f"?{names}" if names else "")


if __name__ == "__main__":
    raise SystemExit(main())
