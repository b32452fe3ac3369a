"""The ``lrtune`` command, run as real subprocesses of the installed console script.

Every invocation pays for importing torch (~2-3 s of CPU), so the module launches all of its
commands up front on a small thread pool (:func:`runs`) and the tests only read the results.
In all it is about 90 s of CPU: some 45-50 s of wall time on two otherwise idle cores.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from lrtune.exceptions import InvalidInputError, LRTuneError, StorageUnavailableError
from lrtune.result import RangeTestReport

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
_SCRIPT = Path(sys.executable).with_name("lrtune")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "lrtune.cli"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PASTE_MARKER = "# paste into your training script:"
COMMAND_TIMEOUT_S = 240
DROP_READ_ALL = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search")

# The acceptance check: SGD on the digits MLP with 4 seeds.
FIND_DIGITS = ["find", "--model", "mlp", "--dataset", "digits", "--seeds", "4", "--threads", "1"]

# Big enough that the search itself (range test, 4 trials, 4 baselines) costs a couple of CPU
# seconds on top of the ~3 s every process spends importing, so a rerun that reuses the study
# is measurably cheaper; logreg keeps it quick, and no adaptive seeds keep its cost fixed.
TUNE_JOB = """\
model: {name: logreg}
dataset: {name: synthetic, params: {n_samples: 20000}}
range_test: {seeds: 2, num_iter: 40}
search: {n_trials: 4, epochs: 3, max_confirm_seeds: 3}
"""


@dataclass
class Result:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    cpu_s: float  # user + system CPU time of the process (not perturbed by other load)

    def describe(self) -> str:
        return (
            f"lrtune {' '.join(self.args)} -> {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )

    def json(self) -> Any:
        assert self.returncode == 0, self.describe()
        return json.loads(self.stdout)


def run_cli(*args: str, stderr_tty: bool = False, prefix: Sequence[str] = ()) -> Result:
    """Run ``lrtune ARGS``; with ``stderr_tty``, stderr is a terminal (so progress bars show).

    ``prefix``: a command that runs lrtune (e.g. setpriv with its options).
    """
    out_r, out_w = os.pipe()
    if stderr_tty:
        err_r, err_w = pty.openpty()
        # A pty starts 0 columns wide, which tqdm would render as empty bars.
        fcntl.ioctl(err_w, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    else:
        err_r, err_w = os.pipe()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.Popen(
        [*prefix, *CLI, *args],
        stdin=subprocess.DEVNULL,
        stdout=out_w,
        stderr=err_w,
        env=env,
        cwd=REPO,
    )
    os.close(out_w)
    os.close(err_w)
    chunks: dict[int, list[bytes]] = {out_r: [], err_r: []}

    def drain(fd: int) -> None:
        while True:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the pty's other side closed
                break
            if not data:
                break
            chunks[fd].append(data)
        os.close(fd)

    readers = [threading.Thread(target=drain, args=(fd,), daemon=True) for fd in chunks]
    for reader in readers:
        reader.start()
    killer = threading.Timer(COMMAND_TIMEOUT_S, proc.kill)
    killer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)  # per-process CPU time, unlike RUSAGE_CHILDREN
    finally:
        killer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(timeout=30)
    return Result(
        args=list(args),
        returncode=proc.returncode,
        stdout=b"".join(chunks[out_r]).decode(errors="replace"),
        stderr=b"".join(chunks[err_r]).decode(errors="replace"),
        cpu_s=usage.ru_utime + usage.ru_stime,
    )


def _job_files(tmp: Path) -> dict[str, Path]:
    texts = {
        "tune.yaml": TUNE_JOB,
        "syntax.yaml": "model: {name: mlp\ndataset: [digits\n",
        "list.yaml": "- model\n- dataset\n",
        "unknown_field.yaml": (
            "model: {name: mlp}\ndataset: {name: digits}\nsearch: {n_trialz: 3, epochs: 2}\n"
        ),
        "deep.yaml": "[" * 5000 + "]" * 5000,
        "deep.json": "[" * 5000 + "]" * 5000,
        "not_a_database.db": "model: {name: mlp}\n" * 100,
    }
    paths = {}
    for name, text in texts.items():
        paths[name] = tmp / name
        paths[name].write_text(text)
    (tmp / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    (tmp / "a_directory").mkdir()
    # Unreadable: only a user other than root can be refused (root reads any file).
    (tmp / "unreadable.yaml").write_text(TUNE_JOB)
    (tmp / "unreadable.yaml").chmod(0o000)
    return paths


# name -> the failing command and what its one-line message must mention.
ERRORS: dict[str, tuple[list[str], list[str]]] = {
    "unknown model": (["find", "--model", "resnet9000", "--dataset", "digits"], ["resnet9000"]),
    "unknown dataset": (["find", "--model", "mlp", "--dataset", "imagenet"], ["imagenet"]),
    "zero seeds": ([*FIND_DIGITS[:5], "--seeds", "0"], ["range_test.seeds"]),
    "bad model param": ([*FIND_DIGITS[:5], "--model-param", "hidden=[0]"], ["hidden"]),
    "malformed model param": ([*FIND_DIGITS[:5], "--model-param", "nokey"], ["nokey"]),
    "start above end": (
        [*FIND_DIGITS[:5], "--start-lr", "1", "--end-lr", "0.1"],
        ["end_lr", "start_lr"],
    ),
    "cuda without cuda": ([*FIND_DIGITS[:5], "--device", "cuda", "--quiet"], ["cuda"]),
    "find without model or dataset": (["find"], ["--model", "--dataset"]),
    # {tmp} is the module's scratch directory.
    "tune missing job": (["tune", "{tmp}/no_such_job.yaml"], ["no_such_job.yaml"]),
    "tune yaml syntax error": (["tune", "{tmp}/syntax.yaml"], ["syntax.yaml", "line"]),
    "tune job is a list": (["tune", "{tmp}/list.yaml"], ["mapping", "list"]),
    "tune unknown field": (["tune", "{tmp}/unknown_field.yaml"], ["search.n_trialz"]),
}

# Bugs: each of these should be a one-line error with exit status 2, and is not (yet).
FIXED_BUGS: dict[str, tuple[list[str], list[str]]] = {
    # Each of these once ended in a traceback or several lines; kept as regressions.
    "unparsable storage url": (
        ["tune", "{tmp}/tune.yaml", "--quiet", "--storage", "not-a-url"],
        ["invalid storage URL", "not-a-url"],
    ),
    "unreachable storage": (
        ["tune", "{tmp}/tune.yaml", "--quiet", "--storage", "postgresql+psycopg://u@127.0.0.1:1/x"],
        ["cannot open the storage", "127.0.0.1:1"],
    ),
    "end_lr beyond float32": (
        [
            *FIND_DIGITS[:5],
            "--seeds",
            "1",
            "--num-iter",
            "3",
            "--end-lr",
            "1e300",
            "--quiet",
            "--threads",
            "1",
        ],
        ["range_test.end_lr"],
    ),
    "infinite end_lr": (
        [*FIND_DIGITS[:5], "--seeds", "1", "--end-lr", "inf", "--quiet", "--threads", "1"],
        ["range_test.end_lr"],
    ),
}
# Issue 6, defect 7: each of these printed a traceback (exit 1), or failed only after the work.
FIXED_BUGS.update(
    {
        "deeply nested yaml job": (["tune", "{tmp}/deep.yaml"], ["deep.yaml", "nested too deeply"]),
        "deeply nested json job": (
            ["find", "--job", "{tmp}/deep.json"],
            ["deep.json", "nested too deeply"],
        ),
        "job is a directory": (["tune", "{tmp}/a_directory"], ["a_directory", "directory"]),
        "job is not utf-8": (["tune", "{tmp}/latin1.yaml"], ["latin1.yaml", "UTF-8"]),
        "sqlite storage is a directory": (
            ["tune", "{tmp}/tune.yaml", "--quiet", "--storage", "sqlite:///{tmp}/a_directory"],
            ["a_directory", "directory"],
        ),
        "sqlite storage is not a database": (
            [
                "tune",
                "{tmp}/tune.yaml",
                "--quiet",
                "--storage",
                "sqlite:///{tmp}/not_a_database.db",
            ],
            ["not_a_database.db", "not a database"],
        ),
        "sqlite storage under a file": (
            ["tune", "{tmp}/tune.yaml", "--quiet", "--storage", "sqlite:///{tmp}/tune.yaml/s.db"],
            ["tune.yaml/s.db", "regular file"],
        ),
        "storage driver not installed": (
            ["tune", "{tmp}/tune.yaml", "--quiet", "--storage", "mysql://u@127.0.0.1:1/x"],
            ["mysql://u@127.0.0.1:1/x", "driver", "not installed"],
        ),
        # The sqlite file left absent shows the check came before any work.
        "plots dir is a file": (
            [
                *["tune", "{tmp}/tune.yaml", "--quiet", "--plots", "{tmp}/tune.yaml"],
                *["--storage", "sqlite:///{tmp}/never_plots.db"],
            ],
            ["--plots", "tune.yaml", "regular file"],
        ),
        "plots dir under a file": (
            ["tune", "{tmp}/tune.yaml", "--quiet", "--plots", "{tmp}/tune.yaml/plots"],
            ["--plots", "regular file"],
        ),
        "artifacts dir is a file": (
            [
                *["tune", "{tmp}/tune.yaml", "--quiet", "--artifacts", "{tmp}/tune.yaml"],
                *["--storage", "sqlite:///{tmp}/never_artifacts.db"],
            ],
            ["--artifacts", "regular file"],
        ),
        "plot is a directory": (
            [*FIND_DIGITS[:5], "--quiet", "--plot", "{tmp}/a_directory"],
            ["--plot", "directory"],
        ),
        "plot under a file": (
            [*FIND_DIGITS[:5], "--quiet", "--plot", "{tmp}/tune.yaml/curve.png"],
            ["--plot", "regular file"],
        ),
        "unknown option": (
            ["tune", "{tmp}/tune.yaml", "--bogus"],
            ["--bogus", "lrtune --help"],
        ),
        "missing argument": (["tune"], ["job", "lrtune tune --help"]),
        "unknown command": (["fnd"], ["fnd", "lrtune --help"]),
    }
)
ERRORS.update(FIXED_BUGS)
# Root reads any file; run this one without the capabilities that let it (setpriv, util-linux).
WITHOUT_ROOTS_READ_ALL = {"unreadable job"}
ERRORS["unreadable job"] = (["tune", "{tmp}/unreadable.yaml"], ["unreadable.yaml", "Permission"])


def _tune_sequence(tmp: Path) -> dict[str, Any]:
    """The same job three times on one storage: fresh, rerun (--json), rerun (human)."""
    common = [
        "tune",
        str(tmp / "tune.yaml"),
        "--quiet",
        "--threads",
        "1",
        "--storage",
        f"sqlite:///{tmp}/s.db",
    ]
    first = run_cli(*common, "--json", "--plots", str(tmp / "plots"))
    db_after_first = (tmp / "s.db").exists()
    second = run_cli(*common, "--json")
    human = run_cli(*common)
    return {"first": first, "second": second, "human": human, "db": db_after_first}


class Runs:
    """Commands launched in parallel when the module starts; ``get`` waits for one."""

    def __init__(self, tmp: Path, pool: ThreadPoolExecutor) -> None:
        self.tmp = tmp
        self.futures: dict[str, Future[Any]] = {}
        submit: dict[str, Callable[[], Any]] = {
            "tune": lambda: _tune_sequence(tmp),
            "find json": lambda: run_cli(*FIND_DIGITS, "--json", "--quiet"),
            "find human": lambda: run_cli(
                *FIND_DIGITS, "--plot", str(tmp / "curve.png"), stderr_tty=True
            ),
            "find params": lambda: run_cli(
                *FIND_DIGITS[:5],
                "--model-param",
                "hidden=[32,16]",
                "--dataset-param",
                "val_fraction=0.3",
                "--seeds",
                "1",
                "--num-iter",
                "20",
                "--json",
                "--quiet",
                "--threads",
                "1",
            ),
            "find job": lambda: run_cli(
                "find",
                "--job",
                str(EXAMPLES / "digits_mlp.yaml"),
                "--seeds",
                "2",
                "--num-iter",
                "20",
                "--json",
                "--quiet",
                "--threads",
                "1",
            ),
            "list": lambda: run_cli("list"),
            "list json": lambda: run_cli("list", "--json"),
            "list threads": lambda: run_cli("list", "--threads", "1"),
            "threads before command": lambda: run_cli("--threads", "1", "list", "--json"),
        }
        for name, (args, _) in ERRORS.items():
            argv = [a.replace("{tmp}", str(tmp)) for a in args]
            as_root = os.geteuid() == 0 and shutil.which("setpriv")
            prefix = DROP_READ_ALL if name in WITHOUT_ROOTS_READ_ALL and as_root else ()
            submit[name] = lambda argv=argv, prefix=prefix: run_cli(*argv, prefix=prefix)
        for name, fn in submit.items():
            self.futures[name] = pool.submit(fn)

    def get(self, name: str) -> Any:
        return self.futures[name].result(timeout=4 * COMMAND_TIMEOUT_S)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    tmp = tmp_path_factory.mktemp("cli")
    _job_files(tmp)
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="lrtune-cli") as pool:
        yield Runs(tmp, pool)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.returncode == 2, result.describe()
    assert "Traceback" not in result.stderr, result.describe()
    assert result.stdout == "", result.describe()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.describe()
    assert lines[0].startswith("lrtune: error: "), result.describe()
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert 5_000 < len(data) < 5_000_000, (path, len(data))
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 300 and height >= 200, (path, width, height)


# --- find ----------------------------------------------------------------------------------


def test_find_json_acceptance(runs: Runs) -> None:
    result = runs.get("find json")
    out = result.json()
    assert "Traceback" not in result.stderr
    assert 1e-2 <= out["suggestion"] <= 1, out["suggestion"]
    assert isinstance(out["spread_decades"], float)
    assert math.isfinite(out["spread_decades"]) and out["spread_decades"] >= 0
    assert len(out["seeds"]) == 4
    assert out["config"]["engine"] == "vectorized"
    assert out["config"]["seeds"] == 4
    assert out["config"]["optimizer"] == "SGD"
    assert out["job"]["model"]["name"] == "mlp"
    assert out["job"]["dataset"]["name"] == "digits"
    # The JSON is a schema of its own: it reads back, and its job is a valid spec.
    report = RangeTestReport.model_validate_json(result.stdout)
    assert report.suggestion == out["suggestion"] and report.job.model.name == "mlp"


def test_find_human_output_plot_and_progress(runs: Runs) -> None:
    human = runs.get("find human")
    assert human.returncode == 0, human.describe()
    assert "Traceback" not in human.stderr
    # Same run as the JSON one (same seeds, one thread): the same answer, as printed.
    out = runs.get("find json").json()
    assert f"suggested lr: {out['suggestion']:.3g}" in human.stdout, human.stdout
    assert out["suggestions"], out
    for rule in out["suggestions"]:
        assert re.search(rf"^\s+{re.escape(rule)}\s", human.stdout, re.M), (rule, human.stdout)
    # The progress bar went to the terminal on stderr, and none of it to stdout.
    assert "it/s" in human.stderr and "\r" in human.stderr, human.stderr[:500]
    assert "\r" not in human.stdout and "it/s" not in human.stdout
    assert_png(runs.tmp / "curve.png")


def test_find_passes_model_and_dataset_params(runs: Runs) -> None:
    out = runs.get("find params").json()
    assert out["job"]["model"] == {"name": "mlp", "params": {"hidden": [32, 16]}}
    assert out["job"]["dataset"] == {"name": "digits", "params": {"val_fraction": 0.3}}
    assert len(out["seeds"]) == 1 and out["config"]["num_iter"] == 20


def test_find_with_job_file(runs: Runs) -> None:
    out = runs.get("find job").json()
    job = out["job"]
    assert job["name"] == "digits-mlp"
    assert job["model"] == {"name": "mlp", "params": {"hidden": [128]}}
    assert job["dataset"]["name"] == "digits"
    assert job["optimizer"]["name"] == "sgd" and job["optimizer"]["momentum"] == 0.9
    # Command-line options still override the job file.
    assert job["range_test"]["seeds"] == 2 and len(out["seeds"]) == 2
    assert out["config"]["num_iter"] == 20


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_are_one_line(runs: Runs, case: str) -> None:
    if case == "cuda without cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case in WITHOUT_ROOTS_READ_ALL and os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: every file is readable")
    message = assert_one_line_error(runs.get(case), *ERRORS[case][1])
    listing = runs.get("list json").json()
    if case == "unknown model":
        assert all(name in message for name in listing["models"]), message
    if case == "unknown dataset":
        assert all(name in message for name in listing["datasets"]), message
    if case in ("plots dir is a file", "artifacts dir is a file"):
        assert not list(runs.tmp.glob("never_*.db")), "the search started before the check"


def test_threads_is_accepted_before_the_command_and_by_every_command(runs: Runs) -> None:
    assert runs.get("list threads").returncode == 0, runs.get("list threads").describe()
    assert runs.get("threads before command").json() == runs.get("list json").json()


# --- list ----------------------------------------------------------------------------------

MODELS = ["mlp", "cnn", "logreg"]
DATASETS = ["digits", "wine", "diabetes", "breast_cancer", "synthetic"]


def test_list(runs: Runs) -> None:
    result = runs.get("list")
    assert result.returncode == 0, result.describe()
    models = re.search(r"^models:\s*(.*)$", result.stdout, re.M)
    datasets = re.search(r"^datasets:\s*(.*)$", result.stdout, re.M)
    assert models and datasets, result.stdout
    assert set(MODELS) <= set(models.group(1).split(", "))
    assert set(DATASETS) <= set(datasets.group(1).split(", "))


def test_list_json(runs: Runs) -> None:
    listing = runs.get("list json").json()
    assert set(MODELS) <= set(listing["models"])
    assert set(DATASETS) <= set(listing["datasets"])


# --- tune ----------------------------------------------------------------------------------


def _finished(n_trials: dict[str, int]) -> int:
    return n_trials.get("complete", 0) + n_trials.get("pruned", 0)


def test_tune_json_plots_and_storage(runs: Runs) -> None:
    results = runs.get("tune")
    first = results["first"]
    out = first.json()
    assert "Traceback" not in first.stderr
    assert out["schedule"]["family"]
    assert out["base_lr"] > 0
    rows = out["comparison"]
    assert rows[0]["role"] == "recommended", rows
    baselines = ["constant at suggestion", "sgd default lr", "prodigy", "schedule-free sgd"]
    assert [r["name"] for r in rows if r["role"] == "baseline"] == [
        name for name in baselines if name != rows[0]["name"]
    ], rows
    # the confirmation table: every candidate on every confirmation seed, and the paired verdict
    seeds = out["confirm_seeds"]
    assert out["confirmed"] and len(seeds) == 3
    assert all(sorted(map(int, r["seed_values"])) == seeds for r in rows), rows
    paired = out["paired_comparisons"]
    assert {p["baseline"] for p in paired} <= {r["name"] for r in rows[1:]}
    assert set(baselines) - {rows[0]["name"]} <= {p["baseline"] for p in paired}
    assert all(p["verdict"] != "does not beat" for p in paired), paired
    assert isinstance(out["verdict"], str) and out["verdict"]
    assert "\noptimizer = " in out["code"]
    assert _finished(out["n_trials"]) == 4, out["n_trials"]
    assert sum(out["n_trials"].values()) == 4, out["n_trials"]
    for name in ("loss_vs_lr.png", "schedule.png", "history.png"):
        assert_png(runs.tmp / "plots" / name)
    assert results["db"], "sqlite storage file not created"


def test_tune_rerun_reuses_the_study(runs: Runs) -> None:
    results = runs.get("tune")
    first, second = results["first"].json(), results["second"].json()
    assert _finished(second["n_trials"]) == 4, second["n_trials"]
    assert sum(second["n_trials"].values()) == 4, second["n_trials"]
    # Nothing was re-run: the stored range test, trials and baselines come back unchanged.
    for key in ("study_name", "range_test", "history", "finalists", "baselines", "comparison"):
        assert second[key] == first[key], key
    # CPU time, not wall time: other processes on the machine cannot make the rerun look slow.
    assert results["second"].cpu_s < results["first"].cpu_s, (
        results["first"].cpu_s,
        results["second"].cpu_s,
    )


def test_tune_human_output(runs: Runs) -> None:
    results = runs.get("tune")
    human = results["human"]
    assert human.returncode == 0, human.describe()
    out = results["first"].json()
    text = human.stdout
    assert "recommended:" in text
    header = r"^schedule\s+family\s+lr\s+val_loss\*\s+mean\s+std(\s+seed \d+){3}\s*$"
    assert re.search(header, text, re.M), text
    assert "lr bounds:" in text and "confirmation runs:" in text, text
    assert out["verdict"] in text
    assert PASTE_MARKER in text, text
    snippet = text.split(PASTE_MARKER, 1)[1].strip("\n")
    code = compile(snippet, "<snippet>", "exec")
    train_loader = [None] * 10  # a schedule stepped per batch reads len(train_loader)
    namespace: dict[str, Any] = {"model": torch.nn.Linear(20, 2), "train_loader": train_loader}
    exec(code, namespace)
    optimizer = namespace["optimizer"]
    chosen = out["comparison"][0]  # the recommended row: the job's SGD, or an LR-free one
    expected = {None: "SGD", "prodigy": "Prodigy", "schedule_free": "SGDScheduleFree"}
    assert type(optimizer).__name__ == expected[chosen["lr_free"]]
    assert optimizer.defaults["lr"] == pytest.approx(out["base_lr"], rel=1e-3)  # 4 digits
    # every candidate is in the table, the learning-rate-free baselines included
    for row in out["comparison"]:
        assert re.search(rf"^{re.escape(row['name'])}\b", text, re.M), row["name"]
    assert {"prodigy", "schedule-free sgd"} <= {row["name"] for row in out["comparison"]}


# --- the library errors the CLI reports --------------------------------------------------------


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("not-a-url", InvalidInputError),
        ("mysql://u@127.0.0.1:1/x", InvalidInputError),
        ("sqlite:///:memory:", InvalidInputError),
        ("sqlite:///{tmp}", StorageUnavailableError),
        ("sqlite:///{tmp}/file.db", StorageUnavailableError),
        ("sqlite:///{tmp}/file.db/s.db", StorageUnavailableError),
        ("postgresql+psycopg://u@127.0.0.1:1/x", StorageUnavailableError),
    ],
)
def test_storage_errors_say_whether_the_url_or_the_storage_is_at_fault(
    tmp_path: Path, where: str, expected: type[Exception]
) -> None:
    from lrtune.optuna_storage import open_storage

    (tmp_path / "file.db").write_text("not a database\n")
    with pytest.raises(expected) as raised:
        open_storage(where.replace("{tmp}", str(tmp_path)))

    assert isinstance(raised.value, LRTuneError)
    # The search counts ValueError and RuntimeError inside a trial as a failed trial; an outage
    # must stop it instead of spending the trial budget.
    unavailable = expected is StorageUnavailableError
    assert isinstance(raised.value, (ValueError, RuntimeError)) is not unavailable
    assert "\n" not in str(raised.value)


def test_waiting_for_a_crashed_workers_trial_prints_no_optuna_warning(tmp_path: Path) -> None:
    """A rerun soon after a crash waits for the dead trial to go stale, then retries it."""
    import optuna

    from lrtune.optuna_storage import open_storage
    from lrtune.spec import JobSpec
    from lrtune.tuner import prepare_study, run_worker

    spec = JobSpec.model_validate(
        {
            "model": {"name": "logreg"},
            "dataset": {"name": "wine"},
            "range_test": {"seeds": 1, "num_iter": 10},
            "search": {
                "families": ["constant", "cosine"],
                "n_trials": 2,
                "epochs": 1,
                "pruner": "none",
                "baselines": False,
            },
        }
    )
    storage = open_storage(f"sqlite:///{tmp_path}/s.db", heartbeat_interval=1, grace_period=2)
    prepare_study(spec, storage, progress=False)
    crashed = optuna.load_study(study_name=spec.study_name(), storage=storage).ask()
    storage.record_heartbeat(crashed._trial_id)  # then its worker died

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_worker(spec.study_name(), storage, wait_for_others=True)

    experimental = [
        w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)
    ]
    assert experimental == [], [str(w.message) for w in experimental]
    states = [
        t.state.name
        for t in optuna.load_study(study_name=spec.study_name(), storage=storage).trials
    ]
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states, states
