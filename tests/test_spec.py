from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from lrtune.exceptions import InvalidInputError
from lrtune.schedules import FAMILIES
from lrtune.spec import MAX_EPOCHS, MAX_TRIALS, JobSpec

MINIMAL = {"model": {"name": "mlp"}, "dataset": {"name": "digits"}}


def spec_with(**overrides) -> dict:
    data = json.loads(json.dumps(MINIMAL))
    for dotted, value in overrides.items():
        target = data
        *parents, leaf = dotted.split("__")
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    return data


def test_minimal_spec_is_valid_with_sensible_defaults() -> None:
    spec = JobSpec.model_validate(MINIMAL)
    assert spec.optimizer.name == "sgd" and spec.optimizer.momentum == 0.9
    assert spec.search.families == list(FAMILIES)
    assert spec.search.pruner == "hyperband" and spec.search.sampler == "tpe"
    assert spec.search.direction == "minimize"  # inferred from the default metric val_loss
    assert spec.range_test.seeds >= 2 and spec.device == "auto"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"search__n_trials": MAX_TRIALS + 1}, "search.n_trials"),
        ({"search__n_trials": 0}, "search.n_trials"),
        ({"search__epochs": MAX_EPOCHS + 1}, "search.epochs"),
        ({"search__families": ["cosine", "warp"]}, "search.families"),
        ({"search__families": []}, "search.families"),
        ({"search__families": ["step", "step"]}, "search.families"),
        ({"search__metric": "accuracy", "search__direction": "minimize"}, "search"),
        ({"search__pruner": "asha"}, "search.pruner"),
        ({"search__lr_threshold": 0}, "search.lr_threshold"),
        ({"optimizer__name": "lbfgs"}, "optimizer.name"),
        ({"optimizer__name": "adam", "optimizer__nesterov": True}, "optimizer"),
        ({"optimizer__momentum": 1.5}, "optimizer.momentum"),
        ({"range_test__start_lr": 1.0, "range_test__end_lr": 0.5}, "range_test"),
        ({"range_test__num_iter": 1}, "range_test.num_iter"),
        ({"range_test__seeds": 100}, "range_test.seeds"),
        ({"batch_size": 0}, "batch_size"),
        ({"device": "tpu"}, "device"),
        ({"name": "has spaces"}, "name"),
        ({"dataset__params": {"max_samples": 10**9}}, "dataset.params"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_violations_are_field_level_errors(overrides: dict, field: str) -> None:
    data = spec_with(**overrides)
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(data)
    locations = {".".join(str(p) for p in e["loc"]) for e in info.value.errors()}
    assert any(loc == field or loc.startswith(field + ".") for loc in locations), locations


def test_param_group_prefixes_must_be_distinct() -> None:
    data = spec_with(
        param_groups=[{"prefix": "1.", "lr_mult": 0.1}, {"prefix": "1.", "lr_mult": 2}]
    )
    with pytest.raises(ValidationError, match="distinct"):
        JobSpec.model_validate(data)


def test_fingerprint_covers_what_determines_the_answer_and_nothing_else() -> None:
    base = JobSpec.model_validate(MINIMAL)
    same = JobSpec.model_validate(spec_with(search__n_trials=5, name="other", seed=3))
    assert base.fingerprint() == same.fingerprint()
    for overrides in (
        {"model__params": {"hidden": [64]}},
        {"dataset__name": "wine"},
        {"optimizer__name": "adam"},
        {"batch_size": 32},
        {"param_groups": [{"prefix": "1.", "lr_mult": 0.1}]},
    ):
        assert JobSpec.model_validate(spec_with(**overrides)).fingerprint() != base.fingerprint()


def test_study_name_is_the_job_name_or_derived_from_the_whole_spec() -> None:
    assert JobSpec.model_validate(spec_with(name="my-job")).study_name() == "my-job"
    a = JobSpec.model_validate(MINIMAL).study_name()
    b = JobSpec.model_validate(spec_with(search__n_trials=5)).study_name()
    assert a.startswith("lrtune-") and a != b


def test_from_file_reads_yaml_and_json(tmp_path) -> None:
    (tmp_path / "job.yaml").write_text("model: {name: mlp}\ndataset: {name: wine}\nseed: 4\n")
    (tmp_path / "job.json").write_text(json.dumps(spec_with(seed=4, dataset__name="wine")))
    assert JobSpec.from_file(tmp_path / "job.yaml") == JobSpec.from_file(tmp_path / "job.json")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        JobSpec.from_file(tmp_path / "list.yaml")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("deep.yaml", "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("deep.json", "[" * 5000 + "]" * 5000, "nested too deeply"),
        ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "not UTF-8"),
        ("broken.yaml", "model: {name: mlp\n", "not valid YAML"),
        ("broken.json", "{", "not valid JSON"),
        ("list.yaml", "- 1\n", "mapping"),
    ],
)
def test_unreadable_job_files_are_invalid_input_naming_the_file(
    tmp_path, name: str, content: str | bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())

    with pytest.raises(InvalidInputError, match=message) as raised:
        JobSpec.from_file(path)

    assert isinstance(raised.value, ValueError)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_the_optimizer_spec_builds_the_torch_optimizer() -> None:
    import torch

    from lrtune.training import torch_optimizer

    layer = torch.nn.Linear(3, 1)
    spec = JobSpec.model_validate(spec_with(optimizer={"name": "sgd", "nesterov": True}))
    optimizer = torch_optimizer(spec.optimizer, [{"params": layer.parameters(), "lr": 0.5}])
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["nesterov"] and optimizer.param_groups[0]["momentum"] == 0.9
