"""Coming from Transformers: your model, a `datasets.Dataset`, a collator and an `EvalPrediction` metric, trained,
searched and exported as a folder `from_pretrained` and `pipeline` load.

    python examples/coming_from_transformers.py [OUT_DIR]

Needs `pip install transformers datasets`. To stay offline, the model is a tiny random-weight BERT built from a
config and the tokenizer a WordPiece one over a 30-word vocabulary; with a hub model you would write
`AutoModelForSequenceClassification.from_pretrained("bert-base-uncased", num_labels=2)` and
`AutoTokenizer.from_pretrained("bert-base-uncased")` instead, and nothing else changes.

This file is also the task of its own search (`task: <this file>:task`): a search builds each trial's model with
`model_init`, so the script's own steps run under `__main__` only.
"""

from __future__ import annotations

import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import tunetrain
from tunetrain import Task, Trainer, TrainingArguments

WORDS = [
    "good",
    "bad",
    "movie",
    "film",
    "plot",
    "actor",
    "scene",
    "story",
    "music",
    "end",
    "long",
    "short",
    "very",
    "not",
    "quite",
    "the",
    "a",
    "was",
    "is",
    "and",
]


def tokenizer() -> Any:
    """A WordPiece tokenizer over the words above (Transformers 5 takes the vocabulary itself, 4 a file of it)."""
    import inspect

    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    vocab = Path(tempfile.gettempdir()) / "tunetrain-example-vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def model_init(params: dict[str, Any]) -> Any:
    """A fresh model for each trial of a search (the params that are not TrainingArguments come here)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=int(params.get("hidden_size", 32)),
                        num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=32, num_labels=2)  # fmt: skip
    return BertForSequenceClassification(config)


def compute_metrics(eval_pred: Any) -> dict[str, float]:  # Transformers' form: one EvalPrediction
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def task() -> Task:
    """Sentiment: a sentence is positive when it holds "good"."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    tok = tokenizer()

    def split(n: int, seed: int) -> Dataset:
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            words = [rng.choice(WORDS[1:]) for _ in range(rng.randint(3, 9))]
            if rng.random() < 0.5:
                words[rng.randrange(len(words))] = "good"
            rows.append({"text": " ".join(words), "label": int("good" in words)})
        return Dataset.from_list(rows).map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])

    return Task(
        model_init=model_init, train_dataset=split(512, 0), eval_dataset=split(128, 1),
        collate_fn=DataCollatorWithPadding(tok), compute_metrics=compute_metrics, processing_class=tok,
    )  # fmt: skip


def main(out: Path) -> None:
    from transformers import pipeline

    from tunetrain.experiment import experiment_from_dict

    # 1. your model, fine-tuned as a Transformers Trainer would (the model given is the one that trains)
    args = TrainingArguments(output_dir=str(out / "fine-tune"), num_train_epochs=8, per_device_train_batch_size=32,
                             learning_rate=3e-3, eval_strategy="epoch", save_strategy="no", logging_strategy="no",
                             report_to="none", disable_tqdm=True)  # fmt: skip
    trainer = Trainer(task(), args, model=model_init({"hidden_size": 32}))
    trainer.train()
    print("fine-tuned:", {k: round(v, 3) for k, v in trainer.evaluate().items() if k.endswith(("loss", "accuracy"))})
    print("predict:", trainer.predict(trainer.task.eval_dataset).predictions.shape)

    # 2. a search over it: learning rate and width, 4 trials, in-process Optuna (backend: ray for a Ray search)
    experiment = experiment_from_dict({
        "name": "transformers-example", "task": f"{Path(__file__).resolve()}:task",
        "train": {"num_train_epochs": 8, "per_device_train_batch_size": 32, "eval_strategy": "epoch",
                  "save_strategy": "epoch", "logging_strategy": "no", "metric_for_best_model": "accuracy",
                  "report_to": "none"},
        "space": {"learning_rate": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
                  "hidden_size": {"type": "categorical", "choices": [16, 32]}},
        "search": {"backend": "optuna", "num_trials": 4, "scheduler": "none", "storage": str(out / "runs")},
    })  # fmt: skip
    result = tunetrain.search(experiment)
    print(result.summary_line())

    # 3. the best trial exported: a folder Transformers loads as it is
    from tunetrain.results import export_trials

    (export,) = export_trials(str(out / "runs" / "transformers-example"), str(out / "best"), force=True)
    classify = pipeline("text-classification", model=str(export), device="cpu")
    print("pipeline on the export:", classify(["a good film", "the plot was not quite fun"]))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/examples/transformers"))
