"""Every code block in README.md runs here, and its sample output matches what the code prints.

The README's fenced blocks, by their language:

- ``python``: run as a script with this interpreter, in a fresh folder; one that talks to the
  service (``http://127.0.0.1:8000``) runs against the live server below.
- ``bash``: run with ``bash -e`` in a fresh folder that holds a copy of ``examples/`` and the
  virtualenv's ``bin`` first on ``PATH``, against a real ``lrtune serve`` (the README's own
  ``lrtune serve`` block, on a free port that replaces 8000 everywhere). A block that cannot run
  here is in :data:`NOT_RUN` with the reason; :data:`BASH` says how every other one runs.
- ``yaml``: a job spec, validated by :class:`~lrtune.spec.JobSpec`; ``toml``: parsed.
- ``text``: the sample output of the block before it (compared by
  :func:`assert_output_matches`: numbers and runs of spaces are free, ``...`` skips lines and
  ends a line early), or a block of :data:`OTHER_TEXT`, checked its own way.

A block this module does not know fails :func:`test_every_block_is_run_or_listed_with_a_reason`,
so a new one cannot go unchecked.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from cli_runs import run_cli

from lrtune.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SERVICE = "http://127.0.0.1:8000"
"""The service's URL as the README writes it: the test's server's replaces it."""

NOT_RUN = {
    "make demo": "installs a virtualenv and serves until Ctrl-C; tests/test_serve.py runs its "
    "`lrtune serve --submit ... --exit-when-done` on a tiny job, tests/test_repo.py checks the "
    "make targets",
    "pip install": "installs into the reader's environment; tests/test_packaging.py builds and "
    "installs the wheel",
    "lrtune db upgrade --database postgresql": "placeholders (URL, JOB_ID) for a shared "
    "PostgreSQL; tests/test_fleet.py and tests/test_jobs_cli.py run these commands with real "
    "worker processes",
    "CUDA_VISIBLE_DEVICES=0": "needs two GPUs and a shared PostgreSQL; tests/test_gpu.py and "
    "tests/test_fleet.py run workers",
    "lrtune worker --task mytrain:task": "names the reader's own module; tests/test_tasks.py "
    "runs workers with --task on tests/task_fixtures.py, and the same job over the store",
    "lrtune agent --url http://service:8000": "names the reader's own module and service; "
    "tests/test_agents.py runs lrtune agent processes against a real service",
    "LRTUNE_API_TOKEN=$(openssl": "needs Docker; tests/test_compose.py checks docker-compose.yml "
    "against the code",
}
"""``bash`` blocks that do not run here, by how they start, with the reason."""

BASH = {
    "lrtune find": "test_the_cli_range_test_prints_the_sample_output",
    "lrtune tune": "test_the_schedule_search_prints_the_sample_output (slow)",
    "lrtune serve": "the live_service fixture: the server the other blocks talk to",
    "JOB=$(curl": "test_the_service_blocks_run_against_lrtune_serve",
    "python - <<'EOF'": "test_the_service_blocks_run_against_lrtune_serve",
    "lrtune submit examples/": "test_submit_wait_through_the_service (slow)",
}
"""``bash`` blocks that run, by how they start, and the test that runs them."""

OTHER_TEXT = {
    "lrtune find --model mlp": "the CLI's synopsis: every command and option is lrtune's",
    "lrtune/         core library": "the repository's layout: every folder named exists",
}
"""``text`` blocks that are no block's output, by how they start."""


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int  # of the opening fence
    output: str | None = None  # the ``text`` block right after it, if any

    @property
    def first(self) -> str:
        return self.code.lstrip().splitlines()[0] if self.code.strip() else ""

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.lang}: {self.first[:40]!r})"


def read_blocks(text: str) -> list[Block]:
    """The fenced blocks, each code block with the ``text`` block that follows it as output."""
    raw: list[Block] = []
    fence = re.compile(r"^```(\S*)\s*$")
    lines = text.splitlines()
    at = 0
    while at < len(lines):
        opened = fence.match(lines[at])
        if not opened:
            at += 1
            continue
        end = at + 1
        while not lines[end].startswith("```"):
            end += 1
        raw.append(Block(opened.group(1), "\n".join(lines[at + 1 : end]) + "\n", at + 1))
        at = end + 1
    blocks: list[Block] = []
    for block in raw:
        is_output = block.lang == "text" and not _other_text(block)
        if is_output and blocks and blocks[-1].lang in ("python", "bash"):
            previous = blocks.pop()
            blocks.append(Block(previous.lang, previous.code, previous.line, block.code))
        else:
            blocks.append(block)
    return blocks


def _other_text(block: Block) -> bool:
    return any(block.first.startswith(start) for start in OTHER_TEXT)


def _known(block: Block, table: dict[str, str]) -> bool:
    return any(block.first.startswith(start) for start in table)


BLOCKS = read_blocks(README.read_text())


def blocks(lang: str, *starts: str) -> list[Block]:
    found = [b for b in BLOCKS if b.lang == lang]
    if starts:
        found = [b for b in found if any(b.first.startswith(s) for s in starts)]
    return found


def one(lang: str, start: str) -> Block:
    (block,) = blocks(lang, start)
    return block


# --- the blocks, accounted for ------------------------------------------------------------------


def test_every_block_is_run_or_listed_with_a_reason() -> None:
    unknown = []
    for block in BLOCKS:
        if block.lang in ("python", "yaml", "toml"):
            continue  # all run below
        if block.lang == "bash" and (_known(block, NOT_RUN) or _known(block, BASH)):
            continue
        if block.lang == "text" and _other_text(block):
            continue
        unknown.append(str(block))
    assert not unknown, (
        "README blocks that no test runs: run them in tests/test_readme.py, or list them in "
        f"NOT_RUN with the reason (a sample output is a ```text block after its code): {unknown}"
    )
    for table in (NOT_RUN, BASH):  # and nothing listed is gone from the README
        for start in table:
            assert blocks("bash", start), f"no README bash block starts with {start!r}"


def test_the_quick_start_has_the_two_commands_and_the_install_line() -> None:
    make = one("bash", "make demo").code
    assert [line.split()[:2] for line in make.splitlines()] == [
        ["make", "demo"],
        ["make", "test"],
    ]
    assert "pip install -c constraints.txt ." in one("bash", "pip install").code
    quick_start = README.read_text().split("## Your own training code")[0]
    assert "](docs/images/" in quick_start and len(quick_start.splitlines()) < 40


# --- sample output ------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _shape(line: str) -> str:
    return re.sub(r"\s+", " ", _NUMBER.sub("#", line)).strip()


def assert_output_matches(sample: str, printed: str) -> None:
    """Each line of ``sample`` is a line of ``printed``, in order, up to its numbers and its
    runs of spaces; a line ``...`` skips lines, a line ending in ``...`` is a line's start."""
    lines = [_shape(line) for line in printed.splitlines()]
    at = 0
    for want in sample.splitlines():
        if want.strip() == "...":
            continue
        start = want.rstrip().endswith("...")
        shape = _shape(want.rstrip().removesuffix("..."))
        for index in range(at, len(lines)):
            if lines[index].startswith(shape) if start else lines[index] == shape:
                at = index + 1
                break
        else:
            raise AssertionError(
                f"the README's sample line {want!r} is not in what the code printed (after line "
                f"{at}):\n{printed}"
            )


def test_the_output_check_allows_numbers_and_cut_lines_only() -> None:
    printed = "suggested lr: 0.0343  (seeds within 0.24 decades)\nsteepest 0.42\nend 5e-05\n"
    assert_output_matches("suggested lr: 0.05 (seeds within 0.3 decades)\n...\nend 1\n", printed)
    assert_output_matches("steepest ...\n", printed)
    with pytest.raises(AssertionError, match="not in what the code printed"):
        assert_output_matches("suggested LR: 0.05 (seeds within 0.3 decades)\n", printed)
    with pytest.raises(AssertionError):
        assert_output_matches("end 1\nsteepest 0.4\n", printed)  # out of order


# --- running them -------------------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LRTUNE_")}
    bin_dir = str(Path(sys.executable).parent)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    env.update(LRTUNE_TORCH_THREADS="1", MPLBACKEND="Agg", **extra)
    return env


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder like the clone's root for the README's commands: it has ``examples/``."""
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    return tmp_path


def run_block(block: Block, cwd: Path, url: str = SERVICE, timeout: float = 300) -> str:
    """Run a python or bash block in ``cwd`` (``url`` for the README's service); its stdout."""
    code = block.code.replace(SERVICE, url)
    command = [sys.executable, "-c", code] if block.lang == "python" else ["bash", "-e", "-c", code]
    done = subprocess.run(
        command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{block} exited {done.returncode}:\n{done.stderr[-3000:]}"
    if block.output is not None:
        assert_output_matches(block.output, done.stdout)
    return done.stdout


LOCAL_PYTHON = [b for b in blocks("python") if SERVICE not in b.code]


@pytest.mark.parametrize("block", LOCAL_PYTHON, ids=lambda b: f"line{b.line}")
def test_the_python_blocks_run_and_print_their_sample_output(block: Block, workdir: Path) -> None:
    run_block(block, workdir, timeout=180)
    for written in re.findall(r"savefig\(\"([^\"]+)\"\)", block.code):  # the notebook's plot
        assert (workdir / written).stat().st_size > 1000


def test_the_notebook_example_is_self_contained() -> None:
    (notebook,) = [b for b in LOCAL_PYTHON if "find_lr(" in b.code]
    assert "train_loader = " in notebook.code and 'savefig("lr_curve.png")' in notebook.code


@pytest.mark.parametrize("block", blocks("yaml"), ids=lambda b: f"line{b.line}")
def test_the_job_spec_blocks_are_valid_specs(block: Block) -> None:
    spec = JobSpec.model_validate(yaml.safe_load(block.code))
    assert spec.model.name and spec.dataset.name


@pytest.mark.parametrize("block", blocks("toml"), ids=lambda b: f"line{b.line}")
def test_the_toml_blocks_parse(block: Block) -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    assert tomllib.loads(block.code)


def test_the_cli_range_test_prints_the_sample_output(workdir: Path) -> None:
    run_block(one("bash", "lrtune find"), workdir, timeout=180)
    assert (workdir / "curve.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_schedule_search_prints_the_sample_output(workdir: Path) -> None:
    run_block(one("bash", "lrtune tune"), workdir, timeout=1200)
    assert list((workdir / "out").iterdir())


def test_the_synopsis_names_only_commands_and_options_lrtune_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    synopsis = one("text", "lrtune find --model mlp").code
    usages: dict[tuple[str, ...], set[str]] = {}
    command: tuple[str, ...] = ()
    for line in synopsis.splitlines():
        line = line.split("  # ")[0]
        if line.startswith("lrtune "):
            words = line.split()
            command = tuple(words[1:3]) if words[1] == "db" else (words[1],)
        usages.setdefault(command, set()).update(re.findall(r"--[a-z][a-z-]*", line))
    code, top, _ = run_cli(capsys, "--help")
    assert code == 0
    listed = {words[0] for words in usages}
    commands = set(re.findall(r"^    (\w+)\s", top, re.M))
    assert listed == commands, "the synopsis and `lrtune --help` list other commands"
    for words, options in usages.items():
        code, help_text, _ = run_cli(capsys, *words, "--help")
        assert code == 0, words
        missing = {option for option in options if option not in help_text}
        assert not missing, f"lrtune {' '.join(words)} has no {sorted(missing)}"


def test_the_layout_names_folders_that_exist() -> None:
    layout = one("text", "lrtune/         core library").code
    folders = re.findall(r"(?:^|\s)([a-z/]+/)(?=\s)", layout)
    expected = {"lrtune/", "api/", "workers/", "tests/", "bench/", "examples/"}
    assert expected | {"lrtune/search/", "lrtune/jobs/", "lrtune/cli/"} <= set(folders)
    for folder in folders:
        assert (REPO / folder).is_dir(), folder


# --- against the service ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def live_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The README's ``lrtune serve`` block, as written, on a free port in a fresh folder (so
    its store is that folder's ``lrtune.db``); yields its URL and the folder."""
    folder = tmp_path_factory.mktemp("service")
    shutil.copytree(REPO / "examples", folder / "examples")
    (line,) = one("bash", "lrtune serve").code.strip().splitlines()
    command = line.split("#")[0].split()
    assert command == ["lrtune", "serve"], "the README starts the service another way: update"
    port = _free_port()
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        cwd=folder,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=5).json().get("live_workers"):
                    break
            except (httpx.TransportError, ValueError):
                pass
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "lrtune serve did not get ready"
            time.sleep(0.2)
        yield url, folder
    finally:
        process.terminate()
        try:
            process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    assert (folder / "lrtune.db").exists()  # the README says: ./lrtune.db


def test_the_service_blocks_run_against_lrtune_serve(live_service: tuple[str, Path]) -> None:
    url, folder = live_service
    run_block(one("bash", "python - <<'EOF'"), folder, url)  # a CSV upload, target by default
    run_block(one("bash", "JOB=$(curl"), folder, url)  # submit, follow, read the answer
    (client,) = [b for b in blocks("python") if SERVICE in b.code]
    run_block(client, folder, url)  # the same spec: answered by the curl block's job


@pytest.mark.slow
def test_submit_wait_through_the_service(live_service: tuple[str, Path]) -> None:
    url, folder = live_service
    run_block(one("bash", "lrtune submit examples/"), folder, url)


def test_the_client_methods_the_readme_lists_are_the_clients() -> None:
    from lrtune.client import Client

    sentence = re.search(r"`Client` has (.*?);", README.read_text(), re.S)
    assert sentence is not None, "the README's list of Client methods moved: update this test"
    listed = set(re.findall(r"`(\w+)`", sentence.group(1)))
    public = {name for name in vars(Client) if not name.startswith("_") and name != "close"}
    assert listed == public, (
        f"the README lists Client methods {sorted(listed - public)} that it lacks and omits "
        f"{sorted(public - listed)}"
    )
