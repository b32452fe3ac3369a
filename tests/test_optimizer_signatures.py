"""Every torch.optim optimizer by name: the static table pinned to torch, the spec's checks, the
built optimizer, its snippet, and small real jobs."""

from __future__ import annotations

import inspect
import json
import math
import typing
from pathlib import Path
from typing import Any

import pytest
import torch
from pydantic import ValidationError

from lrtune.cli import main
from lrtune.optimizer_signatures import (
    EXCLUDED_KEYWORDS,
    LEFT_OUT,
    OPTIMIZERS,
    Bounds,
    check_keywords,
)
from lrtune.schedules import drive, parse_schedule
from lrtune.snippet import job_code
from lrtune.spec import FIELD_KEYWORDS, JobSpec, OptimizerName, OptimizerSpec
from lrtune.training import TrainingSetup, torch_optimizer

MINIMAL = {"model": {"name": "logreg"}, "dataset": {"name": "wine"}}

# Some keywords of every optimizer, away from torch's defaults, as a user would write them.
KWARGS: dict[str, dict[str, Any]] = {
    "sgd": {"dampening": 0.1},
    "adam": {"amsgrad": True},
    "adamw": {"amsgrad": True},
    "rmsprop": {"alpha": 0.9, "momentum": 0.5, "centered": True},
    "nadam": {"betas": [0.8, 0.99], "momentum_decay": 0.005},
    "radam": {"decoupled_weight_decay": True, "weight_decay": 0.01},
    "adamax": {"betas": [0.85, 0.995], "eps": 1e-7},
    "adagrad": {"lr_decay": 0.01, "initial_accumulator_value": 0.1},
    "adadelta": {"rho": 0.95},
    "asgd": {"t0": 5, "lambd": 1e-3},
    "rprop": {"etas": [0.4, 1.3], "step_sizes": [1e-5, 10]},
    "adafactor": {"eps": [None, 1e-2], "d": 2},
}


def torch_parameters(info: Any) -> dict[str, inspect.Parameter]:
    """The optimizer's constructor's parameters, but ``self``."""
    cls = getattr(torch.optim, info.torch_class)
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}


def kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return "boolean"
    if isinstance(default, int | float):
        return "number"
    assert isinstance(default, tuple) and len(default) == 2, default
    return "pair_first_optional" if default[0] is None else "pair"


# --- the table, pinned to the installed torch ---------------------------------------------------


def test_every_torch_optimizer_is_in_the_table_or_left_out_with_a_reason() -> None:
    classes = {
        name
        for name, cls in vars(torch.optim).items()
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)
    } - {"Optimizer"}
    in_table = {info.torch_class for info in OPTIMIZERS.values()}
    assert classes == in_table | set(LEFT_OUT), "a torch upgrade added or removed an optimizer"
    assert all(name == info.torch_class.lower() for name, info in OPTIMIZERS.items())
    assert list(typing.get_args(OptimizerName)) == list(OPTIMIZERS)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_table_is_torchs_signature(name: str) -> None:
    """A torch upgrade that adds, renames, reorders or re-defaults a keyword fails here."""
    info = OPTIMIZERS[name]
    parameters = torch_parameters(info)
    assert info.torch_lr == parameters["lr"].default
    keywords = {k: p for k, p in parameters.items() if k not in EXCLUDED_KEYWORDS}
    assert list(info.keywords) == list(keywords)
    for key, keyword in info.keywords.items():
        default = keywords[key].default
        assert keyword.default == default, (name, key)
        assert keyword.kind == kind_of(default), (name, key)
    assert set(FIELD_KEYWORDS.get(name, ())) <= set(info.keywords)


def _outside(bounds: Bounds) -> list[float]:
    """Numbers just outside ``bounds``' finite ends."""
    values = []
    if math.isfinite(bounds.low):
        values.append(bounds.low if bounds.low_open else bounds.low - 0.01)
    if math.isfinite(bounds.high):
        values.append(bounds.high if bounds.high_open else bounds.high + 0.01)
    return values


def _bounded() -> list[tuple[str, str, int, Bounds]]:
    """(optimizer, keyword, position in a pair or -1, bounds) of every bound in the table."""
    cases = []
    for name, info in OPTIMIZERS.items():
        for key, keyword in info.keywords.items():
            if isinstance(keyword.bounds, Bounds) and keyword.kind == "number":
                cases.append((name, key, -1, keyword.bounds))
            elif keyword.bounds is not None:
                each = keyword.bounds
                pair = each if isinstance(each, tuple) else (each, each)
                cases += [(name, key, i, b) for i, b in enumerate(pair)]
    return cases


@pytest.mark.parametrize(("name", "key", "index", "bounds"), _bounded())
def test_every_bound_in_the_table_is_one_torch_enforces(
    name: str, key: str, index: int, bounds: Bounds
) -> None:
    info = OPTIMIZERS[name]
    cls = getattr(torch.optim, info.torch_class)
    params = [torch.nn.Parameter(torch.zeros(2, 2))]
    default = info.keywords[key].default
    for bad in _outside(bounds):
        value: Any = bad
        if index >= 0:
            value = list(default)  # type: ignore[arg-type]
            value[index] = bad
        with pytest.raises(ValueError):
            cls(params, **{key: tuple(value) if index >= 0 else value})
        with pytest.raises(ValueError, match=f"{name}'s {key} takes"):
            check_keywords(name, {key: value})


# --- the spec -------------------------------------------------------------------------------


def optimizer_spec(**fields: Any) -> OptimizerSpec:
    return JobSpec.model_validate({**MINIMAL, "optimizer": fields}).optimizer


def test_names_are_case_insensitive_and_kept_in_lower_case() -> None:
    assert optimizer_spec(name="RMSprop").name == "rmsprop"
    assert optimizer_spec(name="NAdam").torch_class == "NAdam"
    assert optimizer_spec(name="SGD", nesterov=True).keyword_arguments()["nesterov"] is True


@pytest.mark.parametrize(
    ("optimizer", "fingerprint"),
    [
        (None, "e4dbf6dd47852e776ac83b24dbcb9c3e2aa8a8a928ad3123e137bcd95126c00a"),
        (
            {"name": "sgd", "momentum": 0.9},
            "e4dbf6dd47852e776ac83b24dbcb9c3e2aa8a8a928ad3123e137bcd95126c00a",
        ),
        (
            {"name": "adamw", "weight_decay": 0.01},
            "98d4fdb11393c9c07ccd8db48820f8e836218dbcdd99a0de4e6d6eee24ed70fb",
        ),
        (
            {"name": "sgd", "nesterov": True},
            "c0e1ef245837953472982c55bf92d092373746e26def9867f1480f3abbaf682d",
        ),
        (
            {"name": "adam", "betas": [0.8, 0.99], "eps": 1e-7},
            "ebc52a4d30431422455594cd1619f7d839f776bc11e67da0fc06dc99bb9096cf",
        ),
    ],
)
def test_a_spec_written_before_kwargs_dumps_and_fingerprints_as_it_did(
    optimizer: dict[str, Any] | None, fingerprint: str
) -> None:
    """Stored jobs hold such specs; the fingerprints are those lrtune gave them before."""
    spec = JobSpec.model_validate({**MINIMAL, **({"optimizer": optimizer} if optimizer else {})})
    assert spec.fingerprint() == fingerprint
    assert set(spec.optimizer.model_dump(mode="json")) == {
        "name",
        "momentum",
        "nesterov",
        "weight_decay",
        "betas",
        "eps",
    }


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_round_trips_through_json_with_its_keywords(name: str) -> None:
    spec = JobSpec.model_validate({**MINIMAL, "optimizer": {"name": name, "kwargs": KWARGS[name]}})
    dumped = json.loads(spec.model_dump_json())
    again = JobSpec.model_validate(dumped)
    assert again == spec and again.fingerprint() == spec.fingerprint()
    assert dumped["optimizer"]["kwargs"] == json.loads(json.dumps(KWARGS[name]))
    if name not in FIELD_KEYWORDS:  # the fields that do not apply are left out
        assert set(dumped["optimizer"]) == {"name", "kwargs"}


@pytest.mark.parametrize(
    ("optimizer", "loc", "message"),
    [
        ({"name": "rmsprop", "kwargs": {"betas": [0.9, 0.99]}}, "kwargs", "no keyword 'betas'"),
        ({"name": "rmsprop", "kwargs": {"momentum": True}}, "kwargs", "takes a number >= 0"),
        ({"name": "rmsprop", "kwargs": {"centered": 1}}, "kwargs", "takes true or false"),
        ({"name": "rmsprop", "kwargs": {"momentum": "0.9"}}, "kwargs", "takes a number"),
        ({"name": "rmsprop", "kwargs": {"momentum": -1}}, "kwargs", "takes a number >= 0"),
        ({"name": "rmsprop", "kwargs": {"alpha": math.nan}}, "kwargs", "got NaN"),
        ({"name": "rmsprop", "kwargs": {"alpha": math.inf}}, "kwargs", "got Infinity"),
        ({"name": "rmsprop", "kwargs": {"alpha": 10**400}}, "kwargs", "takes a number"),
        ({"name": "rmsprop", "kwargs": {"lr": 0.1}}, "kwargs", "lr cannot be set"),
        ({"name": "rmsprop", "kwargs": {"foreach": True}}, "kwargs", "foreach cannot be set"),
        ({"name": "nadam", "kwargs": {"betas": [0.9]}}, "kwargs", "takes a pair"),
        ({"name": "rprop", "kwargs": {"etas": [1.5, 1.2]}}, "kwargs", "the first in (0, 1)"),
        ({"name": "sgd", "kwargs": {"momentum": 0.5}}, "kwargs", "with the optimizer's momentum"),
        ({"name": "rmsprop", "momentum": 0.5}, "momentum", "field of sgd only"),
        ({"name": "nadam", "betas": [0.8, 0.9]}, "betas", "field of adam and adamw only"),
        ({"name": "sgd", "nesterov": True, "kwargs": {"dampening": 0.1}}, "", "dampening 0"),
        ({"name": "lbfgs"}, "name", "'sgd', 'adam'"),
        ({"name": "sparseadam"}, "name", "'sgd', 'adam'"),
    ],
)
def test_a_bad_optimizer_is_a_field_level_error_that_says_what_is_accepted(
    optimizer: dict[str, Any], loc: str, message: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        JobSpec.model_validate({**MINIMAL, "optimizer": optimizer})
    (error,) = raised.value.errors()
    assert ".".join(map(str, error["loc"])) == ".".join(filter(None, ["optimizer", loc]))
    assert message in error["msg"]
    if loc in ("kwargs", "momentum", "betas"):  # names every keyword the optimizer accepts
        name = optimizer["name"]
        for keyword in OPTIMIZERS[name].keywords:
            assert keyword in error["msg"]


def test_a_bad_keyword_in_a_job_file_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "job.json"
    job.write_text(json.dumps({**MINIMAL, "optimizer": {"name": "RMSprop", "kwargs": {"b": 1}}}))
    with pytest.raises(SystemExit) as exited:
        main(["find", "--job", str(job)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lrtune: error: invalid job: optimizer.kwargs")
    assert "rmsprop accepts alpha" in err


def test_the_default_lr_is_each_optimizers_own_but_sgds_is_0_1() -> None:
    for name, info in OPTIMIZERS.items():
        expected = 0.1 if name == "sgd" else torch_parameters(info)["lr"].default
        assert optimizer_spec(name=name).default_lr == expected
    assert optimizer_spec(name="adam").default_lr == 1e-3  # as before


# --- the built optimizer and its snippet ----------------------------------------------------


def hyperparameters(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What every param group trains with, but the params."""
    return {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_spec_builds_its_torch_optimizer_with_its_keywords(name: str) -> None:
    spec = optimizer_spec(name=name, kwargs=KWARGS[name])
    optimizer = torch_optimizer(spec, [{"params": torch.nn.Linear(3, 2).parameters(), "lr": 0.5}])
    assert type(optimizer).__name__ == OPTIMIZERS[name].torch_class
    group = hyperparameters(optimizer)
    for key, value in KWARGS[name].items():
        assert group[key] == (tuple(value) if isinstance(value, list) else value), key
    assert group["lr"] == 0.5


def test_a_torch_without_the_class_is_an_error_that_says_so(monkeypatch) -> None:
    monkeypatch.delattr(torch.optim, "Adafactor")
    with pytest.raises(ValueError, match=r"needs torch\.optim\.Adafactor.*upgrade torch"):
        torch_optimizer(optimizer_spec(name="adafactor"), [{"params": [torch.zeros(1)]}])


SNIPPET_CASES = [
    (name, family, groups)
    for name in OPTIMIZERS
    for family in ("onecycle", "cyclic", "cosine")
    for groups in (False, True)
    if family == "cosine" or name in ("sgd", "adam", "rmsprop", "nadam", "adagrad", "rprop")
]


@pytest.mark.parametrize(("name", "family", "groups"), SNIPPET_CASES)
def test_the_snippet_steps_like_the_trained_optimizer(name: str, family: str, groups: bool) -> None:
    """Exec'd on a fresh model, the snippet's optimizer has the class and every hyperparameter
    of the one training builds and schedules, at every step: LRs, momentum or betas (which
    onecycle and cyclic cycle) and the optimizer's own keywords."""
    extra = {"momentum": 0.9} if name == "rmsprop" else {}
    spec = JobSpec.model_validate(
        {
            "model": {"name": "mlp", "params": {"hidden": [8]}},
            "dataset": {"name": "wine"},
            "batch_size": 32,
            "search": {"epochs": 2},
            "optimizer": {"name": name, "kwargs": {**KWARGS[name], **extra}},
            "param_groups": [{"prefix": "1.", "lr_mult": 0.5}] if groups else [],
        }
    )
    setup = TrainingSetup.from_spec(spec, device="cpu")
    lr, steps = 0.0125, setup.steps_per_epoch  # LRs of 4 significant digits: written exactly
    schedule = parse_schedule(
        {
            "onecycle": {"family": "onecycle", "max_lr": lr, "pct_start": 0.3},
            "cyclic": {"family": "cyclic", "base_lr": 0.00125, "max_lr": lr, "step_size_up": 3},
            "cosine": {"family": "cosine", "T_max": 2},
        }[family]
    )
    trained = setup.build_optimizer(setup.build_model(), lr)
    driver = drive(schedule, trained, steps, 2, group_multipliers=setup.group_multipliers)
    # the snippet reads steps_per_epoch = len(train_loader)
    namespace: dict[str, Any] = {"model": setup.build_model(), "train_loader": range(steps)}
    exec(job_code(spec, schedule, lr, steps_per_epoch=steps), namespace)
    snippet, scheduler = namespace["optimizer"], namespace.get("scheduler")
    assert type(snippet) is type(trained)
    for _epoch in range(2):
        for _ in range(steps):
            assert_same_groups(snippet, trained)
            trained.step()
            driver.after_batch()
            snippet.step()
            if schedule.interval == "batch":
                scheduler.step()
        driver.after_epoch(1.0)
        if schedule.interval == "epoch":
            scheduler.step()


def assert_same_groups(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    assert len(a.param_groups) == len(b.param_groups)
    for ours, theirs in zip(a.param_groups, b.param_groups, strict=True):
        ours, theirs = ({k: v for k, v in g.items() if k != "params"} for g in (ours, theirs))
        assert ours.keys() == theirs.keys()
        for key, value in ours.items():
            if isinstance(value, float):
                assert value == pytest.approx(theirs[key], rel=1e-9), key
            else:
                assert value == theirs[key], key


@pytest.mark.parametrize(
    ("name", "kwargs", "onecycle", "cyclic"),
    [
        ("sgd", {}, True, True),
        ("adam", {}, True, False),
        ("nadam", {}, True, False),
        ("rmsprop", {}, False, False),  # momentum 0: torch would switch it on
        ("rmsprop", {"momentum": 0.9}, True, True),
        ("adagrad", {}, False, False),  # neither momentum nor betas: torch would raise
        ("rprop", {}, False, False),
        ("adafactor", {}, False, False),
    ],
)
def test_momentum_is_cycled_exactly_where_the_built_optimizer_allows(
    name: str, kwargs: dict[str, Any], onecycle: bool, cyclic: bool
) -> None:
    spec = JobSpec.model_validate(
        {**MINIMAL, "search": {"epochs": 2}, "optimizer": {"name": name, "kwargs": kwargs}}
    )
    for family, expected in (("onecycle", onecycle), ("cyclic", cyclic)):
        schedule = parse_schedule(
            {"family": "onecycle", "max_lr": 0.1}
            if family == "onecycle"
            else {"family": "cyclic", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 2}
        )
        code = job_code(spec, schedule, 0.05, steps_per_epoch=5)
        assert f"cycle_momentum={expected}," in code, code
        namespace: dict[str, Any] = {"model": torch.nn.Linear(3, 2), "train_loader": range(5)}
        exec(code, namespace)  # torch accepts the choice
        for _ in range(5):
            namespace["optimizer"].step()
            namespace["scheduler"].step()


# --- the range test and real jobs -----------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_the_range_test_runs_every_optimizer_vectorized_where_it_is_elementwise(
    name: str,
) -> None:
    from lrtune import find_lr

    torch.set_num_threads(1)
    spec = optimizer_spec(name=name, kwargs=KWARGS[name])
    setup = TrainingSetup.from_spec(JobSpec.model_validate({**MINIMAL}), device="cpu")
    curves = {}
    for vectorize in ("auto", False):
        model = setup.build_model()
        optimizer = torch_optimizer(spec, [{"params": list(model.parameters()), "lr": 1e-5}])
        result = find_lr(
            model,
            setup.task.train_loader(torch.Generator().manual_seed(0)),
            optimizer,
            seeds=2,
            seed=3,
            num_iter=25,
            end_lr=1.0,
            vectorize=vectorize,
            progress=False,
        )
        curves[vectorize] = result
    vectorized, sequential = curves["auto"], curves[False]
    expected = "sequential" if name == "adafactor" else "vectorized"  # adafactor: not elementwise
    assert vectorized.config.engine == expected
    for a, b in zip(vectorized.seeds, sequential.seeds, strict=True):
        n = min(len(a.raw), len(b.raw), 20)
        assert a.raw[:n] == pytest.approx(b.raw[:n], rel=1e-3, abs=1e-4)


@pytest.mark.parametrize(
    "optimizer",
    [
        {"name": "RMSprop", "kwargs": {"alpha": 0.9}},
        {"name": "sgd", "momentum": 0.9, "nesterov": True},
    ],
    ids=["rmsprop", "sgd-nesterov"],
)
def test_a_small_real_job_tunes_and_its_snippet_runs(optimizer: dict[str, Any]) -> None:
    from lrtune.tuner import tune

    spec = JobSpec.model_validate(
        {
            **MINIMAL,
            "optimizer": optimizer,
            "range_test": {"seeds": 2, "num_iter": 40},
            "search": {
                "n_trials": 3,
                "epochs": 2,
                "families": ["constant", "onecycle"],
                "confirm_seeds": 1,
                "baselines": True,
            },
        }
    )
    rec = tune(spec, progress=False)
    assert rec.confirmed and rec.best is not None
    baselines = [row for row in rec.comparison if row.role == "baseline" or "default" in row.name]
    assert spec.optimizer.default_lr in [row.base_lr for row in baselines]  # the optimizer's own
    code = rec.to_code()
    setup = TrainingSetup.from_spec(spec, device="cpu")
    namespace: dict[str, Any] = {"model": setup.build_model()}
    exec(code, namespace)
    built = namespace["optimizer"]
    assert type(built) is type(setup.build_optimizer(setup.build_model(), 0.1))
    for key, value in spec.optimizer.keyword_arguments().items():
        assert built.param_groups[0][key] == value
    scheduler = namespace.get("scheduler")
    for _ in range(spec.search.epochs * setup.steps_per_epoch):
        built.step()
        if scheduler is not None and "Step per batch" in code:
            scheduler.step()


def test_lrtune_find_takes_any_optimizer_and_its_momentum(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--optimizer`` in any case; ``--momentum`` goes where the optimizer takes it."""
    argv = ["find", "--model", "logreg", "--dataset", "wine", "--num-iter", "20", "--seeds", "2"]
    assert main([*argv, "--optimizer", "RMSprop", "--momentum", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["optimizer"] == "RMSprop" and out["config"]["engine"] == "vectorized"
    assert out["job"]["optimizer"] == {"name": "rmsprop", "kwargs": {"momentum": 0.5}}
    with pytest.raises(SystemExit) as exited:  # adagrad has no momentum
        main([*argv, "--optimizer", "adagrad", "--momentum", "0.5"])
    assert exited.value.code == 2
    assert "adagrad takes no keyword 'momentum'" in capsys.readouterr().err
