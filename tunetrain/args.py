"""`TrainingArguments`: the knobs of one run, named as in HuggingFace Transformers.

Every value is checked where the object is built: a wrong type, a value out of range, or two options that
cannot go together raise `ConfigError` naming the field and the rule.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tunetrain.errors import ConfigError
from tunetrain.formatting import did_you_mean, show_value
from tunetrain.parsing import parse_float, parse_int

OPTIMIZERS = ("adamw", "adamw_torch", "adamw_torch_fused", "adam", "sgd")
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
    "constant",
    "constant_with_warmup",
    "reduce_lr_on_plateau",
)
# what `lr_scheduler_kwargs` may give each schedule (Transformers' names)
LR_SCHEDULER_KWARGS = {
    "cosine": ("num_cycles",),
    "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("power", "lr_end"),
    "inverse_sqrt": ("timescale",),
    "reduce_lr_on_plateau": ("factor", "patience", "threshold", "cooldown", "min_lr"),
}
STRATEGIES = ("no", "steps", "epoch")
REPORT_TO = ("tensorboard", "none")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile's
# backends every torch registers: named so that checking one of them needs no import of torch._dynamo (1.6 s); any
# other name is looked up in torch's registry (a plugin's backend, or a typo)
_BUILTIN_COMPILE_BACKENDS = ("inductor", "eager", "aot_eager", "cudagraphs")


@dataclass(kw_only=True)
class TrainingArguments:
    """What one training run does; the names and defaults follow `transformers.TrainingArguments`.

    Allowed values: `optim` in adamw (= adamw_torch) | adamw_torch_fused | adam | sgd (sgd takes `momentum`);
    `lr_scheduler_type` in linear | cosine | cosine_with_restarts | polynomial | inverse_sqrt | constant |
    constant_with_warmup | reduce_lr_on_plateau (stepped at each evaluation with `metric_for_best_model`), with
    `lr_scheduler_kwargs` as in Transformers (num_cycles; power, lr_end; timescale; factor, patience, threshold,
    cooldown, min_lr);
    `logging_strategy`, `eval_strategy`, `save_strategy` in no | steps | epoch; `report_to` in tensorboard | none.
    `max_steps` > 0 overrides `num_train_epochs`. `metric_for_best_model` names an evaluation metric with or
    without its `eval_` prefix; it defaults to `loss` when something needs it. `early_stopping_patience` counts
    evaluations without improvement. `label_smoothing_factor`, `label_names`, `eval_on_start`,
    `gradient_checkpointing` (a Transformers model's) and `remove_unused_columns` (of a `datasets.Dataset`: the
    columns the model's forward does not take) mean what they mean in Transformers.
    `torch_compile` trains the model through `torch.compile`, with `torch_compile_backend` (default inductor; any
    name torch registers: eager, aot_eager, cudagraphs, ...) and `torch_compile_mode` (default | reduce-overhead |
    max-autotune | max-autotune-no-cudagraphs); naming either turns `torch_compile` on, as in Transformers. The
    training steps run compiled (evaluation and prediction run the model itself), the checkpoints hold the model's
    own weights, and the time spent compiling is reported as `train_compile_seconds`, apart from `train_runtime`.
    """

    output_dir: str = "tunetrain_output"
    num_train_epochs: float = 3.0
    max_steps: int = -1
    per_device_train_batch_size: int = 8
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    optim: str = "adamw"
    momentum: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    lr_scheduler_type: str = "linear"
    lr_scheduler_kwargs: dict[str, float] | None = None
    warmup_steps: int = 0
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    label_smoothing_factor: float = 0.0
    fp16: bool = False
    bf16: bool = False
    use_cpu: bool = False
    seed: int = 42
    logging_strategy: str = "steps"
    logging_steps: int = 500
    logging_dir: str | None = None
    eval_strategy: str = "no"
    eval_steps: int | None = None
    save_strategy: str = "steps"
    save_steps: int = 500
    save_total_limit: int | None = None
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    early_stopping_patience: int | None = None
    auto_find_batch_size: bool = False
    dataloader_num_workers: int = 0
    report_to: str = "tensorboard"
    disable_tqdm: bool | None = None
    label_names: list[str] | None = None  # the batch keys that hold the labels (default: `labels`)
    eval_on_start: bool = False
    gradient_checkpointing: bool = False
    remove_unused_columns: bool = True
    torch_compile: bool = False
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None

    def __post_init__(self) -> None:
        for name in ("logging_strategy", "eval_strategy", "save_strategy"):
            if getattr(self, name) is False:  # YAML 1.1 reads a bare `no` as false (the "Norway problem")
                setattr(self, name, "no")
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), _FIELD_KINDS[f.name]))
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True  # as in Transformers: naming a backend or a mode turns compiling on
        _check_choices(self)
        _check_ranges(self)
        _check_combinations(self)
        # left None, greater_is_better follows the metric's name: `replace` with another metric derives it again
        self._derived_greater_is_better = self.greater_is_better is None
        if self.eval_steps is None:
            self.eval_steps = self.logging_steps
            if self.eval_strategy == "steps" and self.eval_steps < 1:  # logging off: its steps may be 0
                raise ConfigError(
                    f"`eval_steps` is unset, so it is logging_steps ({self.logging_steps}), but must be >= 1 when "
                    "eval_strategy=steps"
                )
        needs_metric = self.load_best_model_at_end or self.early_stopping_patience is not None
        if self.metric_for_best_model is None and needs_metric:
            self.metric_for_best_model = "loss"
        if self.greater_is_better is None:
            self.greater_is_better = not (self.metric_for_best_model or "loss").endswith("loss")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "train") -> TrainingArguments:
        """Build from a mapping (an experiment file's `train:` section); unknown keys name a close match."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"`{where}` must be a mapping of TrainingArguments fields, got {type(values).__name__}")
        for key in values:
            if key not in _FIELD_KINDS:
                raise ConfigError(f"`{where}.{key}` is not a TrainingArguments field{did_you_mean(key, _FIELD_KINDS)}")
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"`{where}.{str(exc).lstrip('`')}") from None

    def replace(self, **overrides: Any) -> TrainingArguments:
        """A copy with some fields changed, checked like a new object (unknown fields are an error). A
        `greater_is_better` that was derived from the metric's name, not given, is derived again when
        `metric_for_best_model` changes (a copy switched from accuracy to loss minimizes)."""
        values = {**self.to_dict(), **overrides}
        rederive = "metric_for_best_model" in overrides and "greater_is_better" not in overrides
        if rederive and getattr(self, "_derived_greater_is_better", False):
            values["greater_is_better"] = None
        if overrides.get("torch_compile") is False and not {"torch_compile_backend", "torch_compile_mode"} & set(
            overrides
        ):  # compiling turned off: the backend and mode that would turn it back on go with it
            values["torch_compile_backend"] = values["torch_compile_mode"] = None
        return TrainingArguments.from_dict(values, where="args")

    def check_value(self, name: str, value: Any, *, where: str | None = None) -> Any:
        """`value` as field `name` would hold it, checked by the field's own rules (its type; its allowed values;
        its range, given the other fields of this object), not by combinations with other fields; else a
        ConfigError naming `where` (default `name`). A search param's bounds and choices are checked with it where
        the experiment file is loaded, not when a trial starts. This object is left as it is."""
        where = where or name
        if name not in _FIELD_KINDS:
            raise ConfigError(f"`{name}` is not a TrainingArguments field{did_you_mean(name, _FIELD_KINDS)}")
        if value is False and name.endswith("_strategy"):  # YAML 1.1's bare `no`, as in __post_init__
            value = "no"
        probe = copy.copy(self)
        if name != "eval_steps":  # derived from logging_steps after __post_init__'s checks (0 with logging off)
            probe.eval_steps = None
        setattr(probe, name, _coerce(where, value, _FIELD_KINDS[name]))
        try:
            _check_choices(probe)
            _check_ranges(probe)
        except ConfigError as exc:
            message = str(exc)
            if message.startswith(f"`{name}` "):
                raise ConfigError(f"`{where}` {message[len(name) + 3 :]}") from None
            raise ConfigError(f"`{where}` is {show_value(value)}, which these arguments refuse: {message}") from None
        return getattr(probe, name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def objective_metric(self) -> str:
        """The full metric key the run is judged by (`eval_` prefix added, as in Transformers)."""
        name = self.metric_for_best_model or "loss"
        return name if name.startswith("eval_") else f"eval_{name}"


# The fields a run resumed from a checkpoint may change: the loop puts them into the optimizer it restores (the
# learning rate scaled so that the schedule keeps its shape) or reads them at every step. Any other field changes
# what the checkpoint's steps mean (the batches, the schedule's length, the optimizer's kind).
CHANGEABLE_ON_RESUME = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "momentum",
    "max_grad_norm",
    "label_smoothing_factor",
)


def field_names() -> frozenset[str]:
    """The names a search space param may use to override a TrainingArguments field."""
    return frozenset(_FIELD_KINDS)


def field_type(name: str) -> str:
    """The type a TrainingArguments field holds besides None: bool | int | float | str."""
    return _FIELD_KINDS[name][0]


# (type name, allows None); derived once from the annotations so a new field cannot be forgotten.
def _field_kinds() -> dict[str, tuple[str, bool]]:
    kinds = {}
    for f in dataclasses.fields(TrainingArguments):
        annotation = str(f.type)
        kinds[f.name] = (annotation.split(" | ")[0], "None" in annotation)
    return kinds


def _coerce(name: str, value: Any, kind: tuple[str, bool]) -> Any:
    type_name, nullable = kind
    if value is None:
        if nullable:
            return None
        raise ConfigError(f"`{name}` is None, but must be a {type_name}")
    if type_name == "bool":
        if isinstance(value, bool):
            return value
    elif type_name == "int":
        if (number := parse_int(value)) is not None:
            return number
    elif type_name == "float":
        if (number := parse_float(value, strings=True, finite=True)) is not None:  # YAML 1.1 reads `1e-4` as a str
            return number
        if parse_float(value) is not None:  # NaN or inf (a string 'inf' is not a float: the message below)
            raise ConfigError(f"`{name}` is {show_value(value)}, but must be a finite number")
    elif type_name == "str" and isinstance(value, str):
        return value
    elif type_name == "list[str]" and isinstance(value, (list, tuple)) and value and all(map(_is_name, value)):
        return list(value)
    elif type_name == "dict[str, float]" and isinstance(value, Mapping) and all(map(_is_name, value)):
        numbers = {key: parse_float(item, strings=True, finite=True) for key, item in value.items()}
        if all(number is not None for number in numbers.values()):
            return numbers
    shown = show_value(value)
    if value is None or type(value) in (str, int, float, bool):  # show_value leaves a scalar's type out
        shown = f"{shown} ({type(value).__name__})"
    wanted = {"dict[str, float]": "mapping of names to numbers", "list[str]": "list of names"}.get(type_name, type_name)
    raise ConfigError(f"`{name}` is {shown}, but must be a {wanted}")


def _is_name(item: Any) -> bool:
    return isinstance(item, str) and bool(item)


def _check_choices(args: TrainingArguments) -> None:
    for name, allowed in (
        ("optim", OPTIMIZERS),
        ("lr_scheduler_type", LR_SCHEDULERS),
        ("logging_strategy", STRATEGIES),
        ("eval_strategy", STRATEGIES),
        ("save_strategy", STRATEGIES),
        ("report_to", REPORT_TO),
    ):
        value = getattr(args, name)
        if value not in allowed:
            raise ConfigError(f"`{name}` is {show_value(value)}, but must be one of {' | '.join(allowed)}")
    if args.torch_compile_mode is not None and args.torch_compile_mode not in COMPILE_MODES:
        raise ConfigError(
            f"`torch_compile_mode` is {show_value(args.torch_compile_mode)}, but must be one of "
            f"{' | '.join(COMPILE_MODES)}{did_you_mean(args.torch_compile_mode, COMPILE_MODES)}"
        )
    backend = args.torch_compile_backend
    if backend is not None and backend not in _BUILTIN_COMPILE_BACKENDS:
        _check_compile_backend(backend)


def _check_compile_backend(backend: str) -> None:
    """`backend` is a name torch.compile knows (torch's registry: its own backends, and plugins' through their entry
    points); else a ConfigError that lists the usual ones."""
    from torch._dynamo import list_backends

    known = list_backends(exclude_tags=())  # eager and aot_eager too (tagged debug)
    if backend not in known:
        usual = dict.fromkeys([*_BUILTIN_COMPILE_BACKENDS, *list_backends()])  # in order, once each
        raise ConfigError(
            f"`torch_compile_backend` is {show_value(backend)}, but must be a torch.compile backend "
            f"({', '.join(usual)}, ...){did_you_mean(backend, known)}"
        )


def _check_ranges(args: TrainingArguments) -> None:
    positive = ["per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"]
    for name in positive:
        if getattr(args, name) < 1:
            raise ConfigError(f"`{name}` is {getattr(args, name)}, but must be >= 1")
    for name, strategy in (("logging_steps", "logging_strategy"), ("save_steps", "save_strategy")):
        if getattr(args, strategy) == "steps" and getattr(args, name) < 1:
            raise ConfigError(f"`{name}` is {getattr(args, name)}, but must be >= 1 when {strategy}=steps")
    if args.eval_steps is not None and args.eval_steps < 1:
        raise ConfigError(f"`eval_steps` is {args.eval_steps}, but must be >= 1")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise ConfigError(f"`num_train_epochs` is {args.num_train_epochs}, but must be > 0 when max_steps <= 0")
    for name in ("learning_rate", "weight_decay", "momentum", "max_grad_norm", "adam_epsilon"):
        if getattr(args, name) < 0:
            raise ConfigError(f"`{name}` is {getattr(args, name)}, but must be >= 0")
    for name in ("adam_beta1", "adam_beta2", "momentum"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ConfigError(f"`{name}` is {getattr(args, name)}, but must be in [0, 1)")
    if not 0.0 <= args.label_smoothing_factor < 1.0:
        raise ConfigError(f"`label_smoothing_factor` is {args.label_smoothing_factor}, but must be in [0, 1)")
    if not 0.0 <= args.warmup_ratio < 1.0:
        raise ConfigError(f"`warmup_ratio` is {args.warmup_ratio}, but must be in [0, 1)")
    for name in ("warmup_steps", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            raise ConfigError(f"`{name}` is {getattr(args, name)}, but must be >= 0")
    if args.save_total_limit is not None and args.save_total_limit < 1:
        raise ConfigError(f"`save_total_limit` is {args.save_total_limit}, but must be >= 1 (or null for no limit)")
    if args.early_stopping_patience is not None and args.early_stopping_patience < 1:
        raise ConfigError(f"`early_stopping_patience` is {args.early_stopping_patience}, but must be >= 1")
    if not args.output_dir:
        raise ConfigError("`output_dir` is empty, but must name a directory")


def _check_combinations(args: TrainingArguments) -> None:
    if args.fp16 and args.bf16:
        raise ConfigError("`fp16` and `bf16` are both true, but at most one mixed precision can be chosen")
    if args.momentum and args.optim != "sgd":
        raise ConfigError(f"`momentum` is {args.momentum}, but it applies only to optim=sgd (optim is {args.optim!r})")
    if args.lr_scheduler_kwargs:
        allowed = LR_SCHEDULER_KWARGS.get(args.lr_scheduler_type, ())
        for key in args.lr_scheduler_kwargs:
            if key not in allowed:
                takes = f"takes {', '.join(allowed)}" if allowed else "takes none"
                raise ConfigError(
                    f"`lr_scheduler_kwargs.{key}` is not an argument of lr_scheduler_type={args.lr_scheduler_type!r} "
                    f"(it {takes})"
                )
    if args.lr_scheduler_type == "reduce_lr_on_plateau" and args.lr_scheduler_kwargs:
        for key, rule, ok in (
            ("factor", "in (0, 1)", lambda v: 0 < v < 1),
            ("patience", "a whole number >= 0", lambda v: v >= 0 and v == int(v)),
            ("cooldown", "a whole number >= 0", lambda v: v >= 0 and v == int(v)),
            ("threshold", ">= 0", lambda v: v >= 0),
            ("min_lr", ">= 0", lambda v: v >= 0),
        ):
            value = args.lr_scheduler_kwargs.get(key)
            if value is not None and not ok(value):
                raise ConfigError(f"`lr_scheduler_kwargs.{key}` is {value}, but must be {rule}")
    if args.warmup_steps and args.warmup_ratio:
        raise ConfigError("`warmup_steps` and `warmup_ratio` are both set, but only one of them can be")
    if args.load_best_model_at_end:
        if args.eval_strategy == "no":
            raise ConfigError("`load_best_model_at_end` needs an evaluation, but eval_strategy is 'no'")
        if args.save_strategy != args.eval_strategy:
            raise ConfigError(
                f"`load_best_model_at_end` needs save_strategy to match eval_strategy, "
                f"but they are {args.save_strategy!r} and {args.eval_strategy!r}"
            )
        eval_steps = args.eval_steps or args.logging_steps
        if args.eval_strategy == "steps" and args.save_steps % eval_steps:
            raise ConfigError(
                f"`load_best_model_at_end` needs save_steps to be a multiple of eval_steps, "
                f"but they are {args.save_steps} and {eval_steps}"
            )
    if args.lr_scheduler_type == "reduce_lr_on_plateau" and args.eval_strategy == "no":
        raise ConfigError("`lr_scheduler_type` reduce_lr_on_plateau needs an evaluation, but eval_strategy is 'no'")
    if args.early_stopping_patience is not None and args.eval_strategy == "no":
        raise ConfigError("`early_stopping_patience` needs an evaluation, but eval_strategy is 'no'")


_FIELD_KINDS = _field_kinds()
