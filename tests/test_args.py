"""Tests for `tunetrain.args`: TrainingArguments' defaults, the values it derives, its checks and its round trips.

test_loop.py's `test_bad_training_arguments` holds a few of the checks (unknown key, a wrong type, the
load_best_model_at_end rules, optim, fp16 with bf16, batch size, momentum, NaN); the others are here.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from tunetrain.args import TrainingArguments, field_names
from tunetrain.errors import ConfigError

# --- defaults and derived values -----------------------------------------------------------------------------------


def test_defaults_follow_transformers():
    args = TrainingArguments()
    assert (args.output_dir, args.num_train_epochs, args.max_steps) == ("tunetrain_output", 3.0, -1)
    assert (args.per_device_train_batch_size, args.per_device_eval_batch_size) == (8, 8)
    assert (args.learning_rate, args.weight_decay, args.optim, args.lr_scheduler_type) == (5e-5, 0.0, "adamw", "linear")
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.max_grad_norm) == (0.9, 0.999, 1e-8, 1.0)
    assert (args.logging_strategy, args.eval_strategy, args.save_strategy) == ("steps", "no", "steps")
    assert (args.logging_steps, args.save_steps, args.seed) == (500, 500, 42)


def test_eval_steps_defaults_to_logging_steps():
    assert TrainingArguments(logging_steps=7).eval_steps == 7
    assert TrainingArguments(logging_steps=7, eval_steps=3).eval_steps == 3
    # logging off may leave logging_steps at 0: evaluating every 0 steps was a ZeroDivisionError in the loop
    with pytest.raises(ConfigError, match=r"^`eval_steps` is unset, so it is logging_steps \(0\), but must be >= 1"):
        TrainingArguments(eval_strategy="steps", logging_strategy="no", logging_steps=0)
    assert TrainingArguments(logging_strategy="no", logging_steps=0).eval_steps == 0  # no evaluation: no matter


def test_no_metric_is_chosen_until_something_needs_one():
    args = TrainingArguments()
    assert args.metric_for_best_model is None
    assert args.objective_metric == "eval_loss" and args.greater_is_better is False


@pytest.mark.parametrize(
    "needs",
    [
        {"early_stopping_patience": 2, "eval_strategy": "epoch"},
        {"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "epoch"},
    ],
)
def test_the_metric_defaults_to_loss_when_something_needs_one(needs):
    args = TrainingArguments(**needs)
    assert args.metric_for_best_model == "loss"
    assert (args.objective_metric, args.greater_is_better) == ("eval_loss", False)


@pytest.mark.parametrize(
    ("metric", "objective", "greater"),
    [
        ("accuracy", "eval_accuracy", True),
        ("eval_accuracy", "eval_accuracy", True),
        ("loss", "eval_loss", False),
        ("eval_loss", "eval_loss", False),
        ("nll_loss", "eval_nll_loss", False),  # any name ending in `loss` is minimized
        ("f1", "eval_f1", True),
    ],
)
def test_objective_metric_and_greater_is_better_follow_the_metric_name(metric, objective, greater):
    args = TrainingArguments(metric_for_best_model=metric)
    assert (args.objective_metric, args.greater_is_better) == (objective, greater)


def test_an_explicit_greater_is_better_wins_over_the_name():
    assert TrainingArguments(metric_for_best_model="perplexity", greater_is_better=False).greater_is_better is False
    assert TrainingArguments(metric_for_best_model="loss", greater_is_better=True).greater_is_better is True


# --- values read from YAML -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("learning_rate", "1e-4", 1e-4),  # YAML 1.1 reads `1e-4` as a string
        ("learning_rate", 1, 1.0),
        ("num_train_epochs", 2, 2.0),
        ("max_steps", 30.0, 30),
        ("save_total_limit", None, None),
    ],
)
def test_numbers_are_coerced_to_the_field_type(name, value, expected):
    result = getattr(TrainingArguments.from_dict({name: value}), name)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_steps": 2.5}, r"`train.max_steps` is 2.5 \(float\), but must be a int"),
        ({"seed": True}, r"`train.seed` is True \(bool\), but must be a int"),
        ({"fp16": "yes"}, r"`train.fp16` is 'yes' \(str\), but must be a bool"),
        ({"fp16": 1}, r"`train.fp16` is 1 \(int\), but must be a bool"),
        ({"seed": None}, r"`train.seed` is None, but must be a int"),
        ({"output_dir": 3}, r"`train.output_dir` is 3 \(int\), but must be a str"),
        ({"learning_rate": float("inf")}, r"`train.learning_rate` is inf, but must be a finite number"),
        ({"learning_rate": "inf"}, r"`train.learning_rate` is 'inf' \(str\), but must be a float"),
        ({"learning_rate": [0.1]}, r"`train.learning_rate` is \[0.1\] \(list\), but must be a float"),
    ],
)
def test_a_wrong_type_names_the_key_the_value_and_the_type(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingArguments.from_dict(values)


# --- ranges and combinations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"logging_steps": 0}, r"`train.logging_steps` is 0, but must be >= 1 when logging_strategy=steps"),
        ({"save_steps": 0}, r"`train.save_steps` is 0, but must be >= 1 when save_strategy=steps"),
        ({"eval_steps": 0}, r"`train.eval_steps` is 0, but must be >= 1"),
        ({"num_train_epochs": 0}, r"`train.num_train_epochs` is 0.0, but must be > 0 when max_steps <= 0"),
        ({"learning_rate": -0.1}, r"`train.learning_rate` is -0.1, but must be >= 0"),
        ({"adam_beta1": 1.0}, r"`train.adam_beta1` is 1.0, but must be in \[0, 1\)"),
        ({"adam_beta2": -0.1}, r"`train.adam_beta2` is -0.1, but must be in \[0, 1\)"),
        ({"warmup_ratio": 1.0}, r"`train.warmup_ratio` is 1.0, but must be in \[0, 1\)"),
        ({"warmup_steps": -1}, r"`train.warmup_steps` is -1, but must be >= 0"),
        ({"dataloader_num_workers": -1}, r"`train.dataloader_num_workers` is -1, but must be >= 0"),
        ({"save_total_limit": 0}, r"`train.save_total_limit` is 0, but must be >= 1 \(or null for no limit\)"),
        ({"early_stopping_patience": 0}, r"`train.early_stopping_patience` is 0, but must be >= 1"),
        ({"output_dir": ""}, r"`train.output_dir` is empty, but must name a directory"),
        ({"lr_scheduler_type": "step"}, r"`train.lr_scheduler_type` is 'step', but must be one of linear \| cosine"),
        ({"eval_strategy": "always"}, r"`train.eval_strategy` is 'always', but must be one of no \| steps \| epoch"),
        ({"report_to": "wandb"}, r"`train.report_to` is 'wandb', but must be one of tensorboard \| none"),
    ],
)
def test_values_out_of_range(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingArguments.from_dict(values)


def test_a_step_count_is_not_checked_when_its_strategy_is_off():
    args = TrainingArguments(logging_strategy="no", logging_steps=0, save_strategy="epoch", save_steps=0)
    assert (args.logging_steps, args.save_steps) == (0, 0)
    assert TrainingArguments(num_train_epochs=0, max_steps=10).max_steps == 10  # max_steps > 0 overrides epochs


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"warmup_steps": 10, "warmup_ratio": 0.1}, r"`train.warmup_steps` and `warmup_ratio` are both set"),
        (
            {"load_best_model_at_end": True, "eval_strategy": "steps", "eval_steps": 4, "save_steps": 6},
            r"needs save_steps to be a multiple of eval_steps, but they are 6 and 4",
        ),
        ({"early_stopping_patience": 3}, r"`train.early_stopping_patience` needs an evaluation, but eval_strategy"),
    ],
)
def test_options_that_cannot_go_together(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingArguments.from_dict(values)


def test_options_that_go_together():
    args = TrainingArguments(
        optim="sgd", momentum=0.9, load_best_model_at_end=True, eval_strategy="steps", eval_steps=4, save_steps=8
    )
    assert (args.momentum, args.save_steps) == (0.9, 8)


# --- from_dict, replace, to_dict -----------------------------------------------------------------------------------


def test_from_dict_needs_a_mapping():
    with pytest.raises(ConfigError, match=r"`train` must be a mapping of TrainingArguments fields, got list"):
        TrainingArguments.from_dict([("seed", 1)])


def test_from_dict_names_the_section_it_reads():
    with pytest.raises(ConfigError, match=r"`final.seeds` is not a TrainingArguments field \(did you mean `seed`"):
        TrainingArguments.from_dict({"seeds": 1}, where="final")
    with pytest.raises(ConfigError, match=r"^`final.seed` is 'x' \(str\), but must be a int$"):
        TrainingArguments.from_dict({"seed": "x"}, where="final")


def test_an_unknown_key_without_a_close_field_has_no_suggestion():
    with pytest.raises(ConfigError, match=r"^`train.zzzz` is not a TrainingArguments field$"):
        TrainingArguments.from_dict({"zzzz": 1})


def test_replace_returns_a_checked_copy():
    args = TrainingArguments(learning_rate=0.1, seed=1)
    other = args.replace(seed=2, learning_rate="1e-3")
    assert (other.seed, other.learning_rate) == (2, 1e-3)
    assert (args.seed, args.learning_rate) == (1, 0.1)  # the original is unchanged
    with pytest.raises(ConfigError, match=r"`args.learning_rate` is -1.0, but must be >= 0"):
        args.replace(learning_rate=-1.0)
    with pytest.raises(ConfigError, match=r"`args.lerning_rate` is not a TrainingArguments field \(did you mean"):
        args.replace(lerning_rate=0.1)


def test_replace_derives_greater_is_better_from_the_new_metric():
    # found by this file: replace() kept greater_is_better as derived from the old metric, so a copy switched from
    # accuracy to loss still maximized (the run would keep its worst checkpoint as the best)
    args = TrainingArguments(metric_for_best_model="accuracy")
    assert args.replace(metric_for_best_model="loss").greater_is_better is False
    assert TrainingArguments().replace(metric_for_best_model="accuracy").greater_is_better is True
    given = TrainingArguments(metric_for_best_model="accuracy", greater_is_better=False)
    assert given.replace(metric_for_best_model="f1").greater_is_better is False  # given, not derived: kept
    assert TrainingArguments(metric_for_best_model="accuracy").replace(seed=1).greater_is_better is True
    # the other derived fields keep the value they were derived with, as dataclasses.replace would
    assert TrainingArguments(logging_steps=10).replace(logging_steps=20).eval_steps == 10


def test_to_dict_round_trips_through_json():
    args = TrainingArguments(
        output_dir="out", max_steps=100, learning_rate=3e-4, optim="sgd", momentum=0.5, eval_strategy="epoch",
        save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="accuracy", save_total_limit=2,
        bf16=True, logging_dir="logs", disable_tqdm=True,
    )  # fmt: skip
    values = json.loads(json.dumps(args.to_dict()))
    assert set(values) == field_names()
    back = TrainingArguments.from_dict(values)
    assert back == args
    assert back.to_dict() == args.to_dict()


def test_field_names_are_the_dataclass_fields():
    assert field_names() == {f.name for f in dataclasses.fields(TrainingArguments)}
    assert "learning_rate" in field_names() and "objective_metric" not in field_names()


# --- torch_compile -------------------------------------------------------------------------------------------------


def test_torch_compile_is_off_by_default_and_a_backend_or_mode_turns_it_on():
    args = TrainingArguments()
    assert (args.torch_compile, args.torch_compile_backend, args.torch_compile_mode) == (False, None, None)
    assert TrainingArguments(torch_compile=True).torch_compile_backend is None  # torch.compile's default: inductor
    assert TrainingArguments(torch_compile_backend="aot_eager").torch_compile is True  # as in Transformers
    assert TrainingArguments(torch_compile_mode="max-autotune").torch_compile is True
    from_yaml = TrainingArguments.from_dict({"torch_compile": False, "torch_compile_backend": "eager"})
    assert from_yaml.torch_compile is True  # naming a backend wins over the default-looking false, as in Transformers


def test_replace_turning_torch_compile_off_drops_its_backend_and_mode():
    # a search param `torch_compile: [true, false]` over a fixed backend: the copy that turns it off must stay off
    args = TrainingArguments(torch_compile_backend="eager", torch_compile_mode="default")
    off = args.replace(torch_compile=False)
    assert (off.torch_compile, off.torch_compile_backend, off.torch_compile_mode) == (False, None, None)
    assert args.replace(torch_compile=False, torch_compile_backend="aot_eager").torch_compile is True  # named: on
    assert args.replace(seed=1).torch_compile_backend == "eager"  # other copies keep them


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"torch_compile_backend": "aot_eagr"}, r"^`torch_compile_backend` is 'aot_eagr', but must be a torch.compile "
         r"backend \(inductor, eager, aot_eager, cudagraphs, .*\) \(did you mean `aot_eager`\?\)$"),
        ({"torch_compile_mode": "max_autotune"}, r"^`torch_compile_mode` is 'max_autotune', but must be one of default "
         r"\| reduce-overhead \| max-autotune \| max-autotune-no-cudagraphs \(did you mean `max-autotune`\?\)$"),
        ({"torch_compile": "yes"}, r"^`torch_compile` is 'yes' \(str\), but must be a bool$"),
        ({"torch_compile_backend": 3}, r"^`torch_compile_backend` is 3 \(int\), but must be a str$"),
    ],
)  # fmt: skip
def test_bad_torch_compile_values_are_one_line_naming_the_key(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainingArguments(**values)


def test_a_torch_compile_backend_from_torchs_registry_is_taken():
    # not one of the four checked without torch: looked up in torch's registry of backends
    assert TrainingArguments(torch_compile_backend="aot_eager_decomp_partition").torch_compile is True


def test_a_search_param_naming_a_torch_compile_backend_is_checked_like_the_field():
    with pytest.raises(ConfigError, match=r"^`space.torch_compile_backend` is 'indcutor', but must be a torch.co"):
        TrainingArguments().check_value("torch_compile_backend", "indcutor", where="space.torch_compile_backend")
    assert TrainingArguments().check_value("torch_compile_backend", "eager") == "eager"
