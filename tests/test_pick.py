"""The pick: the recommendation is the best candidate among finalists *and* baselines on the
confirmation seeds, the simpler of candidates inside each other's seed noise, never one that
another candidate beats; adaptive confirmation adds seeds while the best are inside the noise;
learning-rate-free optimizers are baselines that can win."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from small_jobs import small_job
from torch import nn

from lrtune.jobs import JobStatus, JobStore, upgrade
from lrtune.recommendation import Recommendation, SeedValue, TrainedSchedule, simplicity
from lrtune.registry import register_model
from lrtune.result import TrainingRun
from lrtune.schedules import parse_schedule
from lrtune.tuner import tune
from lrtune.workers.loop import Worker

SEEDS = (1, 2, 3)


def candidate(
    name: str,
    values: list[float],
    *,
    family: str = "constant",
    role: str = "finalist",
    lr: float = 0.1,
    lr_free: str | None = None,
    **schedule: object,
) -> TrainedSchedule:
    run = TrainingRun(epochs=[{"epoch": 0, "accuracy": values[0], "val_loss": 1.0}])
    return TrainedSchedule(
        name=name,
        role=role,
        schedule=parse_schedule({"family": family, **schedule}),
        base_lr=lr,
        run=run,
        lr_free=lr_free,
        seed_values=[
            SeedValue(seed=s, value=v, status="completed", epochs=3)
            for s, v in zip(SEEDS, values, strict=False)
        ],
    )


@pytest.fixture(scope="module")
def real() -> Recommendation:
    """A real (tiny) job's recommendation: its spec, range test and bounds are reused."""
    return tune(
        small_job(n_trials=2, epochs=2, families=["cosine"], confirm_seeds=3), progress=False
    )


def rebuild(
    real: Recommendation, finalists: list[TrainedSchedule], baselines: list[TrainedSchedule]
) -> Recommendation:
    spec = real.spec.model_copy(
        update={"search": real.spec.search.model_copy(update={"metric": "accuracy"})}
    )
    spec.search.direction = "maximize"
    return Recommendation.build(
        spec=spec,
        study_name=real.study_name,
        range_test=real.range_test,
        bounds=real.bounds,
        finalists=finalists,
        baselines=baselines,
        confirm_seeds=list(SEEDS),
        steps_per_epoch=real.steps_per_epoch,
        group_multipliers=real.group_multipliers,
        n_trials=real.n_trials,
        n_confirmation=real.n_confirmation,
        history=[],
    )


def onecycle(name: str, values: list[float]) -> TrainedSchedule:
    return candidate(name, values, family="onecycle", max_lr=0.3)


def test_a_baseline_that_wins_is_the_recommendation(real: Recommendation) -> None:
    finalists = [onecycle("trial 4", [0.90, 0.91, 0.89]), onecycle("trial 2", [0.88, 0.9, 0.87])]
    default = candidate("sgd default lr", [0.95, 0.96, 0.94], role="baseline", lr=0.1)
    rec = rebuild(real, finalists, [default])
    assert rec.best is rec.baselines[0]
    assert rec.verdict.startswith("no schedule beat a constant LR of 0.1 (sgd default lr)")
    assert all(p.verdict == "beats" for p in rec.paired_comparisons)
    assert "lr_scheduler" not in rec.to_code() and "lr=0.1" in rec.to_code()
    assert rec.comparison[0].role == "recommended" and rec.comparison[0].name == "sgd default lr"


def test_inside_the_seed_noise_the_simpler_candidate_is_recommended(
    real: Recommendation,
) -> None:
    # onecycle's mean is higher, but its per-seed lead over the constant is inside the noise
    best_mean = onecycle("trial 4", [0.95, 0.90, 0.94])
    constant = candidate("constant at suggestion", [0.92, 0.93, 0.91], role="baseline")
    rec = rebuild(real, [best_mean], [constant])
    assert best_mean.mean > constant.mean
    assert rec.best is constant
    (paired,) = rec.paired_comparisons
    assert paired.verdict == "inside the seed noise"
    assert "had the best mean accuracy, inside the seed noise of the simpler" in rec.verdict
    assert "does not beat" not in rec.verdict


def test_a_learning_rate_free_winner_is_recommended_with_its_own_snippet(
    real: Recommendation,
) -> None:
    finalists = [onecycle("trial 1", [0.90, 0.91, 0.89])]
    constant = candidate("constant at suggestion", [0.88, 0.89, 0.88], role="baseline")
    prodigy = candidate(
        "prodigy",
        [0.97, 0.96, 0.97],
        role="baseline",
        lr=1.0,
        lr_free="prodigy",
        family="cosine",
        T_max=real.spec.search.epochs,
    )
    rec = rebuild(real, finalists, [constant, prodigy])
    assert rec.best is prodigy and rec.best.lr_free == "prodigy"
    assert rec.verdict.startswith("tuning did not beat prodigy (learning-rate-free, cosine)")
    code = rec.to_code()
    assert "prodigyopt.Prodigy(" in code and "CosineAnnealingLR" in code
    # the snippet runs on a fresh model and trains it
    model = nn.Linear(4, 2)
    namespace = {"model": model}
    exec(code, namespace)
    optimizer, scheduler = namespace["optimizer"], namespace["scheduler"]
    for _ in range(namespace["epochs"]):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    assert [row.lr_free for row in rec.comparison] == ["prodigy", None, None]
    assert "prodigy (cosine)" in rec.table()


def test_the_recommendation_never_loses_to_a_candidate_it_was_compared_with(
    real: Recommendation,
) -> None:
    rng = random.Random(0)
    families = [("constant", {}), ("cosine", {"T_max": 3}), ("onecycle", {"max_lr": 0.3})]
    for _ in range(200):
        pool = []
        for k in range(rng.randint(2, 5)):
            family, extra = rng.choice(families)
            centre = rng.uniform(0.8, 0.95)
            values = [centre + rng.gauss(0, 0.02) for _ in SEEDS]
            pool.append(candidate(f"c{k}", values, family=family, lr=0.01 * (k + 1), **extra))
        split = rng.randint(1, len(pool) - 1)
        baselines = [c.model_copy(update={"role": "baseline"}) for c in pool[split:]]
        rec = rebuild(real, pool[:split], baselines)
        assert all(p.verdict != "does not beat" for p in rec.paired_comparisons), rec.verdict
        leader = max(pool, key=lambda c: c.mean)
        if rec.best.mean < leader.mean:  # only a simpler one inside the leader's noise
            assert simplicity(rec.best) <= simplicity(leader)
            assert "inside the seed noise of the simpler" in rec.verdict


def test_a_negligible_difference_is_inside_the_noise_however_small_the_noise(
    real: Recommendation,
) -> None:
    # Two candidates a hair apart on every seed (so their measured noise is tinier still),
    # where the candidates span a whole unit: the hair is no reason to pick the complex one.
    hair = [0.999999, 0.999998, 0.999999]
    onecycle_hair = onecycle("trial 2", hair)
    constant = candidate("constant at suggestion", [h - 1e-6 for h in hair], role="baseline")
    poor = candidate("sgd default lr", [0.0, 0.01, 0.0], role="baseline", lr=1e-5)
    rec = rebuild(real, [onecycle_hair], [constant, poor])
    assert rec.best is constant
    assert [p.verdict for p in rec.paired_comparisons] == ["inside the seed noise", "beats"]
    # with room for more seeds, adaptive confirmation retrains both (not the poor one)
    search = rec.spec.search.model_copy(update={"max_confirm_seeds": 8})
    roomy = rec.model_copy(update={"spec": rec.spec.model_copy(update={"search": search})})
    assert [c.name for c in roomy.undecided] == ["trial 2", "constant at suggestion"]


def test_a_diverged_seed_ranks_a_candidate_last(real: Recommendation) -> None:
    diverged = candidate("trial 1", [0.99, math.nan, 0.99], family="cosine", T_max=3)
    steady = candidate("constant at suggestion", [0.86, 0.85, 0.87], role="baseline")
    rec = rebuild(real, [diverged], [steady])
    assert rec.best is steady


# --- adaptive confirmation, on real training --------------------------------------------------


class CannotLearn(nn.Module):
    """Trains as a linear model (so the range test finds an LR), but evaluates to zero logits:
    every run of every schedule, on every seed, scores the same validation loss (the log of the
    class count), so every candidate ties with every other one."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        return logits if self.training else logits * 0.0


@pytest.fixture
def cannot_learn(monkeypatch: pytest.MonkeyPatch) -> str:
    from lrtune import registry

    monkeypatch.setattr(registry._models, "_registered", dict(registry._models._registered))

    @register_model("cannot_learn")
    def factory(input_shape: tuple[int, ...], output_dim: int, **params: object) -> nn.Module:
        return CannotLearn(math.prod(input_shape), output_dim)

    return "cannot_learn"


def tied_job(model: str, **search: object):
    return small_job(
        extra={"model": {"name": model}},
        n_trials=2,
        epochs=1,
        families=["cosine"],
        finalists=1,
        confirm_seeds=2,
        max_confirm_seeds=4,
        baselines=["constant_at_suggestion", "optimizer_default", "prodigy", "schedule_free"],
        **search,
    )


def test_candidates_inside_the_noise_get_seeds_up_to_the_cap_and_the_simplest_wins(
    cannot_learn: str,
) -> None:
    rec = tune(tied_job(cannot_learn), progress=False)
    # every candidate ties: the contenders went from 2 seeds to the cap of 4, one at a time
    assert rec.decided_on_seeds == 4 and rec.confirm_seeds == [1, 2, 3, 4]
    for c in [*rec.finalists, *rec.baselines]:
        assert [s.seed for s in c.seed_values] == [1, 2, 3, 4]
    # 1 finalist x 2 seeds + 4 baselines x 3 seeds, then 2 rounds x 5 candidates
    assert sum(rec.n_confirmation[s] for s in ("complete", "pruned")) == 2 + 12 + 2 * 5
    assert rec.best.name == "constant at suggestion"  # the simplest, then the first
    assert (
        "(decided on 4 seeds: after 2, the best were inside each other's seed noise, so seeds "
        "were added, up to search.max_confirm_seeds)" in rec.verdict
    )
    assert all(p.verdict == "ties" for p in rec.paired_comparisons)
    assert rec.undecided == []


def test_adaptive_confirmation_on_a_worker_queues_units_under_its_lease(
    cannot_learn: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = JobStore(url)
    job = store.submit(tied_job(cannot_learn))
    Worker(store, device="cpu", worker_id="w1", artifact_dir=tmp_path / "art").run(once=True)
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED, done.error
    rec = store.recommendation(job.id).recommendation
    assert rec.decided_on_seeds == 4 and rec.best.name == "constant at suggestion"
    assert done.progress.confirmations_done == done.progress.confirmations_total == 24


# --- best so far: a job that ended before its confirmation ------------------------------------


def test_a_cancelled_job_offers_its_best_finished_trial_as_a_provisional_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from live_api import serve

    from lrtune.api import ApiSettings, create_app
    from lrtune.cli import main
    from lrtune.exceptions import NotFoundError
    from lrtune.training import TrainingSetup
    from lrtune.tuner import prepare_study, run_trials

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = JobStore(url)
    spec = small_job(n_trials=3, epochs=2, families=["cosine"], metric="accuracy")
    job = store.submit(spec)
    with pytest.raises(NotFoundError, match="has no recommendation: it is queued"):
        store.recommendation(job.id)  # a running job: nothing provisional yet
    # the job's search runs as a worker runs it, then it is cancelled before confirmation
    study = prepare_study(spec, url, progress=False, study_name=job.study_name)
    run_trials(study, TrainingSetup.from_spec(spec), progress=False)
    store.cancel(job.id)

    stored = store.recommendation(job.id)
    rec = stored.recommendation
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value)
    assert rec.provisional and not rec.confirmed
    assert rec.best.trial_number == best.number and rec.value == best.value
    assert rec.verdict.startswith("provisional: the job ended before its confirmation")
    assert "CosineAnnealingLR" in rec.code and rec.lr_curve  # what the trial trained with
    # over HTTP and from the CLI, marked as such
    with serve(create_app(ApiSettings(database_url=url))) as base:
        import httpx

        answer = httpx.get(f"{base}/v1/jobs/{job.id}/recommendation").json()
    assert answer["recommendation"]["provisional"] is True
    assert answer["recommendation"]["verdict"] == rec.verdict
    assert main(["recommend", job.id, "--database", url]) == 0
    printed = capsys.readouterr().out
    assert "recommended (PROVISIONAL): trial" in printed and "provisional:" in printed


def test_a_job_cancelled_before_any_trial_finished_says_so(tmp_path: Path) -> None:
    from lrtune.exceptions import NotFoundError

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    store = JobStore(url)
    job = store.submit(small_job(n_trials=3, epochs=2))
    store.cancel(job.id)
    with pytest.raises(NotFoundError, match="it is cancelled, and finished no search trial"):
        store.recommendation(job.id)


# --- acceptance: the README's own example ---------------------------------------------------


def test_the_readme_curl_example_recommends_nothing_worse_than_a_baseline() -> None:
    import json
    import re

    from lrtune.spec import JobSpec

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = re.search(r"-d '(\{\"model\": \{\"name\": \"logreg\"\}.*?)'", readme, re.S)
    assert body is not None, "the README's curl example moved: update this test"
    rec = tune(JobSpec.model_validate(json.loads(body.group(1))), progress=False)
    sign = 1.0 if rec.direction == "maximize" else -1.0
    assert rec.baselines and rec.confirmed
    for baseline in rec.baselines:
        assert sign * rec.value >= sign * baseline.mean, rec.table()
    assert all(p.verdict != "does not beat" for p in rec.paired_comparisons)


@pytest.mark.parametrize("name", ["prodigy", "schedule_free"])
def test_a_learning_rate_free_run_resumed_from_its_checkpoint_ends_as_an_uninterrupted_one(
    name: str, tmp_path: Path
) -> None:
    from lrtune import lr_free
    from lrtune.training import TrainingSetup, train

    spec = small_job(
        extra={
            "model": {
                "name": "sequential",
                "params": {
                    "layers": [
                        {"type": "linear", "out_features": 16},
                        {"type": "batchnorm"},
                        {"type": "relu"},
                        {"type": "linear", "out_features": 3},
                    ]
                },
            }
        },
    )
    setup = TrainingSetup.from_spec(spec)
    schedule, lr = lr_free.recipe(name, spec.optimizer, epochs=3)
    whole = train(setup, parse_schedule(schedule), lr, 3, seed=5, lr_free=name)
    checkpoint = tmp_path / "unit.pt"
    train(setup, parse_schedule(schedule), lr, 2, seed=5, lr_free=name, checkpoint=checkpoint)
    resumed = train(
        setup, parse_schedule(schedule), lr, 3, seed=5, lr_free=name, checkpoint=checkpoint
    )
    assert resumed.resumed_from == 2
    assert resumed.epochs == whole.epochs and resumed.lr_steps == whole.lr_steps


def test_the_learning_rate_free_recipes_are_the_packages_own_defaults() -> None:
    import inspect

    import prodigyopt
    import schedulefree

    from lrtune import lr_free

    def default_lr(cls: type) -> float:
        return inspect.signature(cls.__init__).parameters["lr"].default

    assert default_lr(prodigyopt.Prodigy) == lr_free.PRODIGY_LR
    assert default_lr(schedulefree.SGDScheduleFree) == lr_free.SCHEDULE_FREE_SGD_LR
    assert default_lr(schedulefree.AdamWScheduleFree) == lr_free.SCHEDULE_FREE_ADAMW_LR


def test_a_job_whose_param_groups_scale_the_lr_is_confirmed_without_prodigy() -> None:
    """Prodigy refuses param groups at different LRs: such a job leaves it out of its baselines
    (it failed its confirmation before), and keeps schedule-free, whose groups keep their
    multipliers."""
    groups = [{"prefix": "1.", "lr_mult": 0.1}]
    spec = small_job(
        {"model": {"name": "mlp", "params": {"hidden": [8]}}, "param_groups": groups},
        n_trials=2,
        epochs=2,
        families=["constant"],
        confirm_seeds=1,
        baselines=["optimizer_default", "prodigy", "schedule_free"],
    )
    rec = tune(spec, progress=False)
    assert [b.name for b in rec.baselines] == ["sgd default lr", "schedule-free sgd"]
    assert rec.n_confirmation["fail"] == 0 and rec.confirmed
