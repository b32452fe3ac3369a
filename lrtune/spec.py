"""The job spec: the one definition of an lrtune job.

The CLI reads it from YAML or JSON, the HTTP API validates it, the workers run it. Defaults make
a spec with only ``model`` and ``dataset`` valid; caps keep a shared service safe, and every
violation is a field-level validation error.

Example:
    >>> spec = JobSpec.model_validate({"model": {"name": "mlp"}, "dataset": {"name": "digits"}})
    >>> spec.optimizer.name, spec.batch_size, spec.search.n_trials
    ('sgd', 64, 30)
    >>> len(spec.fingerprint())
    64

Any ``torch.optim`` optimizer, by name in any case, with its keyword arguments:

    >>> optimizer = OptimizerSpec.model_validate({"name": "RMSprop", "kwargs": {"momentum": 0.9}})
    >>> optimizer.name, optimizer.keyword_arguments(), optimizer.default_lr
    ('rmsprop', {'momentum': 0.9}, 0.01)
    >>> optimizer.model_dump()
    {'name': 'rmsprop', 'kwargs': {'momentum': 0.9}}
    >>> OptimizerSpec(nesterov=True).keyword_arguments()
    {'momentum': 0.9, 'nesterov': True, 'weight_decay': 0.0}
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from lrtune._pydantic import JsonObject, JsonText
from lrtune.exceptions import InvalidInputError
from lrtune.optimizer_signatures import OPTIMIZERS, accepted, check_keywords
from lrtune.params import MAX_SEED
from lrtune.schedules import FAMILIES

# Caps that protect a shared service from one job taking it over.
MAX_TRIALS = 500
MAX_EPOCHS = 200
MAX_NUM_ITER = 2000
MAX_SEEDS = 16
MAX_BATCH_SIZE = 8192
MAX_DATASET_SAMPLES = 200_000
MAX_LR = 1e4
MAX_PARALLEL = 256
MAX_YAML_VALUES = 10_000
"""Most values a YAML job file may hold, an alias counted each time it is used: a few hundred
bytes of aliases of aliases (an alias bomb) would expand to billions."""

UNIT_CHECK_S = 5.0
"""Default seconds a run trains between its looks, within an epoch, at whether it must stop (a
requested stop, its job cancelled): :func:`lrtune.training.train`'s ``stop_check_s`` and the
workers' ``LRTUNE_UNIT_CHECK_S`` (:class:`lrtune.jobs.StoreSettings`) both default to it. Here, not
in :mod:`lrtune.training`, so that the job store's settings read it without importing torch."""

Metric = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")]
"""A metric's name in the epoch records: ``val_loss``, ``accuracy``, ``mse`` for registry
models, or what a task's ``evaluate`` returns (its direction then declared)."""
BaselineName = Literal["constant_at_suggestion", "optimizer_default", "prodigy", "schedule_free"]
DEFAULT_BASELINES: tuple[BaselineName, ...] = (
    "constant_at_suggestion",
    "optimizer_default",
    "prodigy",
    "schedule_free",
)
CLASSIC_BASELINES: tuple[BaselineName, ...] = ("constant_at_suggestion", "optimizer_default")
"""What ``search.baselines: true`` meant before the baselines became a list."""

METRIC_DIRECTIONS: dict[str, Literal["minimize", "maximize"]] = {
    "val_loss": "minimize",
    "accuracy": "maximize",
    "mse": "minimize",
}


class _Strict(BaseModel):
    # Unknown keys are typos; NaN/inf would not survive a JSON round trip (JSON has neither).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelRef(_Strict):
    """A model from the registry, by name, with JSON parameters for its factory.

    The params are free-form JSON that can be stored and served back (:data:`JsonObject`:
    Unicode strings, finite numbers, bounded nesting); the factory checks the rest.
    """

    name: JsonText = Field(min_length=1)
    params: JsonObject = Field(default_factory=dict)


class DatasetRef(_Strict):
    """A dataset from the registry, by name, with JSON parameters for its factory (free-form
    JSON, checked as :class:`ModelRef`'s)."""

    name: JsonText = Field(min_length=1)
    params: JsonObject = Field(default_factory=dict)

    @field_validator("params")
    @classmethod
    def _cap_samples(cls, params: dict[str, Any]) -> dict[str, Any]:
        cap = params.get("max_samples")
        if cap is not None and (not isinstance(cap, int) or cap > MAX_DATASET_SAMPLES):
            raise ValueError(f"max_samples must be an integer <= {MAX_DATASET_SAMPLES}")
        return params


OptimizerName = Literal[
    "sgd",
    "adam",
    "adamw",
    "rmsprop",
    "nadam",
    "radam",
    "adamax",
    "adagrad",
    "adadelta",
    "asgd",
    "rprop",
    "adafactor",
]
"""The keys of :data:`lrtune.optimizer_signatures.OPTIMIZERS` (a test holds them equal)."""

FIELD_KEYWORDS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "nesterov", "weight_decay"),
    "adam": ("betas", "eps", "weight_decay"),
    "adamw": ("betas", "eps", "weight_decay"),
}
"""The keywords that sgd, adam and adamw take from :class:`OptimizerSpec`'s own fields, in the
order their constructors are called with them (the fields came before ``kwargs``)."""

SGD_DEFAULT_LR = 0.1
"""SGD's default LR in lrtune (torch's, 1e-3, is one no recipe trains SGD with)."""


def _lower_case(name: Any) -> Any:
    return name.lower() if isinstance(name, str) else name


OptimizerNameInput = Annotated[OptimizerName, BeforeValidator(_lower_case)]
"""An optimizer's name as a user writes it: in any case (``RMSprop``), kept in lower case."""


class OptimizerSpec(_Strict):
    """The optimizer the user trains with; its LR is what lrtune finds.

    ``name`` is any optimizer of :data:`lrtune.optimizer_signatures.OPTIMIZERS` (every
    ``torch.optim`` class that trains with a plain ``optimizer.step()``), in any case, kept in
    lower case. ``kwargs`` holds its constructor's keyword arguments as JSON, checked against
    its signature (an unknown keyword, a value of the wrong kind or a number that is not
    finite is an error on ``optimizer.kwargs`` that lists the accepted keywords); ``lr`` is
    never one of them, it is what lrtune tunes.

    ``sgd``, ``adam`` and ``adamw`` take the keywords of :data:`FIELD_KEYWORDS` from the fields
    below, as they always have, with lrtune's defaults (SGD momentum 0.9, no weight decay for
    AdamW either); their ``kwargs`` hold only their other keywords (``dampening``,
    ``amsgrad``, ...). Every other optimizer takes all its keywords from ``kwargs``, torch's
    defaults for the rest, and those fields must stay at their defaults. A spec's dump leaves
    out what does not apply: an empty ``kwargs``, and the fields for an optimizer that does
    not take them; so a spec written before ``kwargs`` existed dumps, and fingerprints, as it
    always did.

    :func:`lrtune.training.torch_optimizer` builds it (this module never imports torch).
    """

    name: OptimizerNameInput = Field(
        "sgd",
        description="a torch.optim optimizer by its class name, in any case: "
        + ", ".join(OPTIMIZERS),
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only")
    nesterov: bool = Field(False, description="SGD only; needs momentum > 0")
    weight_decay: float = Field(0.0, ge=0, le=1, description="SGD, Adam and AdamW only")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW only")
    eps: float = Field(1e-8, gt=0, le=1e-2, description="Adam/AdamW only")
    kwargs: dict[str, float | bool | list[float | None]] = Field(
        default_factory=dict,
        description="the optimizer's other keyword arguments, checked against its signature "
        '(e.g. {"alpha": 0.9, "centered": true} for rmsprop); sgd, adam and adamw take '
        "momentum, nesterov, betas, eps and weight_decay from the fields above, every other "
        "optimizer takes all its keywords here; never lr",
    )

    @field_validator("momentum", "nesterov", "weight_decay", "betas", "eps")
    @classmethod
    def _field_of_its_optimizers(cls, value: Any, info: ValidationInfo) -> Any:
        name, field = info.data.get("name"), info.field_name
        assert field is not None
        if name is None or name in FIELD_KEYWORDS or value == cls.model_fields[field].default:
            return value
        owners = " and ".join(n for n, fields in FIELD_KEYWORDS.items() if field in fields)
        raise ValueError(
            f"{field} is a field of {owners} only; give {name} its keywords in kwargs "
            f"({accepted(name)})"
        )

    @field_validator("kwargs", mode="before")
    @classmethod
    def _check_kwargs(cls, kwargs: Any, info: ValidationInfo) -> Any:
        name = info.data.get("name")
        if name is None or not isinstance(kwargs, dict):  # the name's or the type's error
            return kwargs
        return check_keywords(name, kwargs, fields=FIELD_KEYWORDS.get(name, ()))

    @model_validator(mode="after")
    def _check_combination(self) -> OptimizerSpec:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer 'sgd' with momentum > 0")
        if self.nesterov and self.kwargs.get("dampening", 0.0) != 0:
            raise ValueError("nesterov needs dampening 0")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError("betas must each be in [0, 1)")
        return self

    @model_serializer(mode="wrap")
    def _leave_out_what_does_not_apply(self, dump: SerializerFunctionWrapHandler):
        # No return annotation: pydantic would take it for the dump's JSON schema.
        data = dump(self)
        if not self.kwargs:
            data.pop("kwargs", None)
        if self.name not in FIELD_KEYWORDS:
            for field in ("momentum", "nesterov", "weight_decay", "betas", "eps"):
                data.pop(field, None)
        return data

    @property
    def torch_class(self) -> str:
        """The optimizer's class in ``torch.optim`` (``RMSprop``)."""
        return OPTIMIZERS[self.name].torch_class

    @property
    def default_lr(self) -> float:
        """The LR the optimizer-default baseline trains at: the optimizer's own default (its
        constructor's ``lr``: Adam/AdamW 1e-3, RMSprop 0.01, Adadelta 1.0, ...), except
        SGD's: 0.1 (:data:`SGD_DEFAULT_LR`), not torch's 1e-3, which no recipe trains SGD
        with; 0.1 is the torchvision recipes' value, and what lrtune's baselines and docs
        have always called "sgd default lr"."""
        return SGD_DEFAULT_LR if self.name == "sgd" else OPTIMIZERS[self.name].torch_lr

    def keyword_arguments(self) -> dict[str, Any]:
        """What the torch constructor is called with besides the params and ``lr``.

        The fields sgd, adam and adamw take (:data:`FIELD_KEYWORDS`, in that order), then
        ``kwargs`` in the signature's order, pairs as tuples; keywords not given keep torch's
        defaults. :func:`lrtune.training.torch_optimizer` and the snippet both call it.
        """
        order = list(OPTIMIZERS[self.name].keywords)
        given = sorted(self.kwargs.items(), key=lambda item: order.index(item[0]))
        return {
            **{field: getattr(self, field) for field in FIELD_KEYWORDS.get(self.name, ())},
            **{k: tuple(v) if isinstance(v, list) else v for k, v in given},
        }

    def resolved_keyword(self, keyword: str) -> Any:
        """The value the optimizer runs with for ``keyword``: given, else torch's default
        (None when the optimizer has no such keyword)."""
        given = self.keyword_arguments()
        if keyword in given:
            return given[keyword]
        known = OPTIMIZERS[self.name].keywords.get(keyword)
        return None if known is None else known.default


class ParamGroupSpec(_Strict):
    """Parameters whose name starts with ``prefix`` train at ``lr_mult`` times the base LR."""

    prefix: JsonText = Field(min_length=1)
    lr_mult: float = Field(gt=0, le=1000)


class RangeTestSpec(_Strict):
    """Options of the LR range test that narrows the search."""

    start_lr: float = Field(1e-7, gt=0, le=MAX_LR, allow_inf_nan=False)
    end_lr: float = Field(10.0, gt=0, le=MAX_LR, allow_inf_nan=False)
    num_iter: int = Field(100, ge=2, le=MAX_NUM_ITER)
    seeds: int = Field(4, ge=1, le=MAX_SEEDS)
    smooth_beta: float = Field(0.98, ge=0, lt=1)
    diverge_threshold: float = Field(4.0, gt=1)
    accumulation_steps: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _check_range(self) -> RangeTestSpec:
        if self.end_lr <= self.start_lr:
            raise ValueError(
                f"end_lr ({self.end_lr}) must be greater than start_lr ({self.start_lr})"
            )
        return self


class SearchSpec(_Strict):
    """Options of the Optuna schedule search."""

    families: list[str] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    n_trials: int = Field(30, ge=1, le=MAX_TRIALS)
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    warmup: bool = Field(True, description="also search a linear warm-up in front")
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    sampler: Literal["tpe", "random"] = "tpe"
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=7 * 24 * 3600,
        description="how long the search hands out trials: tune() stops starting them after "
        "this many seconds and leaves the queue for a later run; workers stop this long after "
        "the job entered searching, skip the queued rest and go on to confirmation",
    )
    target: float | None = Field(
        None,
        description="stop handing out search trials once a finished trial's metric reaches "
        "this (<= when minimizing, >= when maximizing); the queued rest are skipped",
    )
    max_parallel: int = Field(
        4,
        ge=1,
        le=MAX_PARALLEL,
        description="workers that may run this job's trials (or confirmation runs) at once",
    )
    metric: Metric = "val_loss"
    direction: Literal["minimize", "maximize"] | None = None
    lr_threshold: float | None = Field(
        None, gt=0, description="stop a trial once every group's LR has fallen below this"
    )
    baselines: list[BaselineName] = Field(
        default_factory=lambda: list(DEFAULT_BASELINES),
        description="the baselines confirmed beside the finalists, on the same seeds: "
        "constant_at_suggestion (a constant LR at the range test's suggestion), "
        "optimizer_default (a constant LR at the optimizer's default), prodigy and "
        "schedule_free (learning-rate-free optimizers at their documented defaults); any of "
        "them may be the recommendation. [] trains none; true is the older spelling of the "
        "first two, false of []",
    )
    finalists: int = Field(
        3,
        ge=1,
        le=10,
        description="how many of the best distinct schedules are retrained on fresh seeds",
    )
    confirm_seeds: int = Field(
        3,
        ge=0,
        le=MAX_SEEDS,
        description="fresh seeds the finalists and baselines are retrained on; the "
        "recommendation is the candidate with the best mean over them (0: no confirmation, "
        "the search seed alone decides)",
    )
    max_confirm_seeds: int = Field(
        8,
        ge=0,
        le=MAX_SEEDS,
        description="when the best candidates are inside each other's seed noise after "
        "confirm_seeds, they are retrained on one more seed at a time until they separate or "
        "have this many (never fewer than confirm_seeds)",
    )

    @field_validator("baselines", mode="before")
    @classmethod
    def _legacy_bool(cls, baselines: Any) -> Any:
        if isinstance(baselines, bool):
            return list(CLASSIC_BASELINES) if baselines else []
        return baselines

    @field_validator("baselines")
    @classmethod
    def _distinct_baselines(cls, baselines: list[BaselineName]) -> list[BaselineName]:
        if len(set(baselines)) != len(baselines):
            raise ValueError("baselines are listed more than once")
        return baselines

    @field_validator("families")
    @classmethod
    def _known_families(cls, families: list[str]) -> list[str]:
        unknown = [f for f in families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown families {unknown}; choose from {list(FAMILIES)}")
        if len(set(families)) != len(families):
            raise ValueError("families are listed more than once")
        return families

    @property
    def confirm_seeds_cap(self) -> int:
        """The most confirmation seeds a candidate may get (adaptive confirmation's cap)."""
        return max(self.confirm_seeds, self.max_confirm_seeds)

    @model_validator(mode="after")
    def _infer_direction(self) -> SearchSpec:
        expected = METRIC_DIRECTIONS.get(self.metric)
        if expected is None:
            if self.direction is None:
                raise ValueError(
                    f"metric {self.metric!r} is not one lrtune knows: set search.direction "
                    "(minimize or maximize)"
                )
        elif self.direction is None:
            self.direction = expected
        elif self.direction != expected:
            raise ValueError(f"metric {self.metric!r} is to {expected}, not {self.direction}")
        return self


class TaskRef(_Strict):
    """A task by the name its worker or agent published, with JSON params for its factory
    (:mod:`lrtune.task`); the task's code lives on the machines that run it, never in a job.

    ``lrs`` are the LRs of the param groups of the task's optimizer as its code builds them
    (filled from the task, not by the user): the ``optimizer_default`` baseline trains group
    0's ("your lr as written"), and Prodigy, which takes one step size for all groups, is left
    out when they differ.
    """

    name: JsonText = Field(min_length=1, max_length=120)
    params: JsonObject = Field(default_factory=dict)
    lrs: list[Annotated[float, Field(gt=0, le=MAX_LR)]] | None = Field(
        None, min_length=1, max_length=64
    )


class JobSpec(_Strict):
    """Everything needed to find a learning rate and schedule for one model and dataset: a
    registry ``model`` on a ``dataset``, or a ``task`` (the user's own training code)."""

    name: str | None = Field(None, min_length=1, max_length=120, pattern=r"^[A-Za-z0-9_.\-]+$")
    task: TaskRef | None = None
    model: ModelRef | None = Field(None, validate_default=True)
    dataset: DatasetRef | None = Field(None, validate_default=True)
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH_SIZE)
    param_groups: list[ParamGroupSpec] = Field(default_factory=list, max_length=32)
    range_test: RangeTestSpec = Field(default_factory=RangeTestSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    amp: bool = Field(
        False,
        description="mixed precision on CUDA: fp16 autocast with a GradScaler, in the range test "
        "and every trial (the scaler's state is checkpointed with the trial); on a CPU device "
        "a no-op: full precision, and a logged note",
    )
    cuda_fast_kernels: bool = Field(
        False,
        description="on CUDA, trade bit-reproducibility for speed: cuDNN autotuning "
        "(cudnn.benchmark) and TF32 matmuls and convolutions; off, CUDA runs use deterministic "
        "cuDNN kernels in full fp32; ignored on CPU",
    )

    @field_validator("param_groups")
    @classmethod
    def _distinct_prefixes(cls, groups: list[ParamGroupSpec]) -> list[ParamGroupSpec]:
        prefixes = [g.prefix for g in groups]
        if len(set(prefixes)) != len(prefixes):
            raise ValueError("param group prefixes must be distinct")
        return groups

    @model_serializer(mode="wrap")
    def _leave_out_the_unused_half(self, handler: SerializerFunctionWrapHandler) -> Any:
        """A registry job is written without ``task``, a task job without ``model`` and
        ``dataset``: a registry job's JSON (and its study name) is what it was before tasks."""
        dumped = handler(self)
        if isinstance(dumped, dict):
            for key in ("model", "dataset", "task"):
                if dumped.get(key, "") is None:
                    del dumped[key]
        return dumped

    @field_validator("model", "dataset")
    @classmethod
    def _model_and_dataset_or_task(cls, value: Any, info: ValidationInfo) -> Any:
        has_task = info.data.get("task") is not None
        if value is None and not has_task and "task" in info.data:
            raise ValueError(
                f"Field required: a job needs a model and a dataset (or a task to run "
                f"instead): {info.field_name} is missing"
            )
        if value is not None and has_task:
            raise ValueError("a job names a task, or a model and a dataset, not both")
        return value

    @model_validator(mode="after")
    def _registry_metric(self) -> JobSpec:
        if self.task is None and self.search.metric not in METRIC_DIRECTIONS:
            raise ValueError(
                f"search.metric {self.search.metric!r}: a registry model reports "
                f"{', '.join(METRIC_DIRECTIONS)}"
            )
        return self

    @property
    def subject(self) -> str:
        """What the job trains, in words: ``mlp on digits``, or ``task cifar-resnet``."""
        if self.task is not None:
            return f"task {self.task.name}"
        return f"{self.model.name} on {self.dataset.name}"

    @property
    def needs_cuda(self) -> bool:
        """Whether only a CUDA worker may run the job (``device`` is ``cuda`` or ``cuda:N``)."""
        return self.device.startswith("cuda")

    def fingerprint(self) -> str:
        """SHA-256 of what determines the answer: model, dataset, optimizer, batch, groups."""
        key = self.model_dump(
            mode="json",
            include={"model", "dataset", "optimizer", "batch_size", "param_groups", "task"},
        )
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    def study_name(self) -> str:
        """The Optuna study's name: the job's name, else one derived from the whole spec."""
        if self.name:
            return self.name
        whole = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return f"lrtune-{hashlib.sha256(whole).hexdigest()[:16]}"

    @classmethod
    def from_file(cls, path: str | Path) -> JobSpec:
        """Read a spec from a ``.yaml``/``.yml`` or ``.json`` file.

        Raises:
            InvalidInputError: the file is not UTF-8 text, not valid YAML/JSON, nested too
                deeply, expands past :data:`MAX_YAML_VALUES` values (aliases), or not a mapping.
            pydantic.ValidationError: the mapping is not a valid job (also a ``ValueError``).
            OSError: the file cannot be read (missing, a directory, no permission).
        """
        path = Path(path)
        kind = "JSON" if path.suffix == ".json" else "YAML"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"{path}: not UTF-8 text ({exc.reason})") from None
        try:
            data = json.loads(text) if kind == "JSON" else yaml.load(text, _BoundedYamlLoader)
        except _ExpandsTooFar as exc:
            raise InvalidInputError(f"{path}: not a job: {exc}") from None
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            problem = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            raise InvalidInputError(f"{path}: not valid {kind}: {problem}") from exc
        except RecursionError:
            raise InvalidInputError(f"{path}: not a job: {kind} nested too deeply") from None
        if not isinstance(data, dict):
            raise InvalidInputError(
                f"{path}: a job file must hold a mapping, got {type(data).__name__}"
            )
        return cls.model_validate(data)


class _ExpandsTooFar(yaml.YAMLError):
    """A YAML document whose aliases expand past :data:`MAX_YAML_VALUES` values."""


class _BoundedYamlLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a document whose aliases would expand past
    :data:`MAX_YAML_VALUES` values is refused before anything is built from it.

    Example:
        >>> yaml.load("a: &x [1, 2]\\nb: *x", _BoundedYamlLoader)
        {'a': [1, 2], 'b': [1, 2]}
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _check_expansion(root: yaml.Node) -> None:
    """Count the values under ``root`` as built (an alias each time it is used), up to the cap.

    Raises:
        _ExpandsTooFar: past :data:`MAX_YAML_VALUES` (a cycle of aliases gets there too).
    """
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise _ExpandsTooFar(
                f"its YAML expands to more than {MAX_YAML_VALUES} values (an alias counts each "
                "time it is used): write the values out"
            )
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)
