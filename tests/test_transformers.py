"""A Transformers user's model, data and habits (issue 13), with a tiny random-weight BERT built from a config
(tests/hf_task.py; nothing is downloaded). Skipped, saying why, where transformers or datasets is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TESTS

transformers = pytest.importorskip("transformers", reason="the Transformers tests need transformers (CI installs it)")
pytest.importorskip("datasets", reason="the Transformers tests need datasets (CI installs it)")

import hf_task  # noqa: E402  (after the skips: it imports transformers)
import torch  # noqa: E402

from tunetrain import Trainer, TrainingArguments, load_model  # noqa: E402
from tunetrain.cli import main  # noqa: E402
from tunetrain.storage.layout import EXPORT_MARKER  # noqa: E402

pytestmark = pytest.mark.e2e

HF_TASK = f"{TESTS / 'hf_task.py'}:task"


def _experiment(tmp_path: Path, **search) -> Path:
    experiment = {
        "name": "bert", "task": HF_TASK,
        "train": {"num_train_epochs": 2, "per_device_train_batch_size": 16,
                  "eval_strategy": "epoch", "save_strategy": "epoch", "logging_strategy": "no",
                  "metric_for_best_model": "accuracy", "report_to": "none", "output_dir": str(tmp_path / "fit")},
        "space": {"hidden_size": {"type": "categorical", "choices": [16, 32], "default": 32},
                  "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True, "default": 1e-3}},
        "search": {"backend": "optuna", "num_trials": 2, "scheduler": "none", "storage": str(tmp_path / "runs"),
                   **search},
    }  # fmt: skip
    path = tmp_path / "bert.yaml"
    path.write_text(json.dumps(experiment))
    return path


def _same_outputs(directory: Path) -> None:
    """from_pretrained and pipeline load the directory, and give what tunetrain.load_model gives."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(directory)
    batch = tokenizer(["good movie", "the plot was dull and slow"], padding=True, return_tensors="pt")
    theirs = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    ours = load_model(directory)
    with torch.no_grad():
        assert torch.allclose(theirs(**batch).logits, ours(**batch).logits, atol=1e-6)
    classify = pipeline("text-classification", model=str(directory), device="cpu")
    assert {"label", "score"} <= set(classify("a good film")[0])


def test_a_final_fit_of_a_transformers_model_is_a_folder_transformers_loads(tmp_path, capsys):
    # before: no config.json, so neither from_pretrained nor pipeline could load it
    assert main(["train", str(_experiment(tmp_path))]) == 0
    fit = tmp_path / "fit"
    assert {"config.json", "tokenizer.json", "model.safetensors"} <= {p.name for p in fit.iterdir()}
    _same_outputs(fit)
    assert "eval_accuracy" in json.loads((fit / "metrics.json").read_text())  # compute_metrics(eval_pred)


def test_an_export_of_a_search_is_a_folder_transformers_loads_and_force_replaces_it_whole(tmp_path):
    path = _experiment(tmp_path)
    assert main(["search", str(path)]) == 0
    out = tmp_path / "best"
    assert main(["export", str(tmp_path / "runs" / "bert"), "--out", str(out)]) == 0
    _same_outputs(out)
    written = set(json.loads((out / EXPORT_MARKER).read_text())["files"])
    assert {"config.json", "tokenizer.json", "tokenizer_config.json"} <= written  # --force may remove them
    assert main(["export", str(tmp_path / "runs" / "bert"), "--out", str(out), "--force"]) == 0
    _same_outputs(out)


def test_a_pretrained_model_given_to_the_trainer_is_fine_tuned_as_it_is(tmp_path):
    task = hf_task.task()
    model = hf_task.model_init({"hidden_size": 16})
    embeddings = model.bert.embeddings.word_embeddings.weight.detach().clone()
    args = TrainingArguments(output_dir=str(tmp_path / "ft"), max_steps=5, per_device_train_batch_size=8,
                             learning_rate=1e-3, save_strategy="no", logging_strategy="no", report_to="none",
                             disable_tqdm=True)  # fmt: skip
    trainer = Trainer(task, args, model=model)
    trainer.train()
    assert trainer.model is model and not torch.equal(embeddings, model.bert.embeddings.word_embeddings.weight)
    out = trainer.predict(task.eval_dataset)
    assert out.predictions.shape == (64, 2) and out.label_ids.shape == (64,)
    assert 0.0 <= out.metrics["test_accuracy"] <= 1.0
