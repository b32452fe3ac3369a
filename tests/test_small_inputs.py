"""Small inputs that cost much, each refused cheaply in one line: a YAML alias bomb in a job file,
an absurd ``db prune --older-than``, a schedule preview past its budget; and a 405 whose
``Allow`` names every method of the path."""

from __future__ import annotations

import contextlib
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_api import serve

from lrtune.api import ApiSettings, create_app
from lrtune.api.routes.schedules import schedule_preview
from lrtune.api.schemas import MAX_PREVIEW_VALUES, SchedulePreviewRequest
from lrtune.cli import main
from lrtune.jobs import upgrade
from lrtune.spec import JobSpec

MEMORY_CAP = 3 << 30
"""What a child checking an alias bomb may map: the bomb must not take the machine with it."""


def alias_bomb() -> str:
    """431 bytes of YAML whose params expand to 9**9 (387 million) strings."""
    lines = ["model:", "  name: mlp", "  params:"]
    lines.append('    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]')
    for previous, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"    {name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
    return "\n".join([*lines, "dataset: {name: digits}", ""])


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def lrtune_child(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``lrtune ...`` in a child with a memory cap and a deadline."""
    return subprocess.run(
        [sys.executable, "-m", "lrtune.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_cap_memory,
    )


def test_a_yaml_alias_bomb_is_refused_in_one_line(tmp_path: Path) -> None:
    job = tmp_path / "bomb.yaml"
    job.write_text(alias_bomb())
    assert len(job.read_bytes()) < 1000
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    started = time.monotonic()
    done = lrtune_child("submit", str(job), "--database", url, cwd=tmp_path)
    assert time.monotonic() - started < 30
    assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
    assert done.stderr == (
        f"lrtune: error: {job}: not a job: its YAML expands to more than 10000 values (an alias "
        "counts each time it is used): write the values out\n"
    )


def test_aliases_within_the_budget_still_load(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "model: {name: mlp, params: {hidden: &width [64, 64]}}\n"
        "dataset: {name: digits}\n"
        "search: {families: &families [cosine, onecycle]}\n"
    )
    spec = JobSpec.from_file(job)
    assert spec.model.params == {"hidden": [64, 64]}
    assert spec.search.families == ["cosine", "onecycle"]


@pytest.mark.parametrize("age", ["99999999999w", "1e300s", "36601d"])
def test_prune_refuses_an_age_past_a_century_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], age: str
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    try:
        code = main(["db", "prune", "--older-than", age, "--database", url])
    except SystemExit as exit:
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert (
        err == f"lrtune: error: --older-than {age!r} is more than 36600 days: name a shorter age\n"
    )


def preview_request(steps: int, groups: int) -> dict[str, object]:
    return {
        "schedule": {"family": "onecycle", "max_lr": 0.3},  # the dearest: its LR moves each step
        "base_lr": 0.3,
        "epochs": 1,
        "steps_per_epoch": steps,
        "group_multipliers": [1.0] * groups,
    }


@pytest.fixture
def api(tmp_path: Path) -> Iterator[httpx.Client]:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(serve(create_app(ApiSettings(database_url=url))))
        yield stack.enter_context(httpx.Client(base_url=base, timeout=60))


def test_a_schedule_preview_past_its_budget_is_422_and_one_at_it_is_cheap(
    api: httpx.Client,
) -> None:
    refused = api.post("/v1/schedules/preview", json=preview_request(20_000, 32))  # was 4.3 s
    assert refused.status_code == 422, refused.text[:300]
    assert f"at most {MAX_PREVIEW_VALUES} LR values" in refused.json()["detail"]
    for steps, groups in [(MAX_PREVIEW_VALUES, 1), (MAX_PREVIEW_VALUES // 32, 32)]:
        request = SchedulePreviewRequest.model_validate(preview_request(steps, groups))
        schedule_preview(request)  # torch's first import and scheduler set-up, not the cost
        started = time.process_time()
        answer = schedule_preview(request).model_dump_json()
        assert time.process_time() - started < 1.5, (steps, groups)  # 0.3 s on a busy machine
        assert len(answer) < 1_000_000


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("OPTIONS", "/v1/jobs", "GET, POST"),
        ("PUT", "/v1/jobs", "GET, POST"),
        ("OPTIONS", "/v1/jobs/some-id", "DELETE, GET"),
        ("OPTIONS", "/v1/jobs/some-id/cancel", "POST"),
        ("OPTIONS", "/login", "GET, POST"),
    ],
)
def test_a_405_allows_every_method_of_the_path(
    api: httpx.Client, method: str, path: str, allow: str
) -> None:
    response = api.request(method, path)
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert response.json()["detail"] == f"{method} is not allowed on {path}: use {allow}"
