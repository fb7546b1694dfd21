"""A Transformers user's task, tiny and built from configs (nothing downloaded): a random-weight
`BertForSequenceClassification`, a WordPiece tokenizer from a 30-word vocabulary, a `datasets.Dataset` tokenized with
it, `DataCollatorWithPadding`, and a `compute_metrics(eval_pred)` written the Transformers way.

The label of a sentence is whether it holds the word "good"; sentences have 3 to 9 words, so batches pad to
different lengths.
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tunetrain import Task

WORDS = ["good", "bad", "movie", "film", "plot", "actor", "scene", "story", "music", "end", "long", "short", "very",
         "not", "quite", "the", "a", "was", "is", "and", "but", "fun", "dull", "slow", "fast", "new", "old", "big",
         "small", "odd"]  # fmt: skip


def tokenizer() -> Any:
    """A WordPiece tokenizer over the words above (Transformers 5 takes the vocabulary itself, 4 a file of it)."""
    import inspect

    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    if "vocab" in inspect.signature(BertTokenizerFast.__init__).parameters:
        return BertTokenizerFast(vocab={token: i for i, token in enumerate(tokens)})
    vocab = Path(tempfile.gettempdir()) / "tunetrain-test-hf-vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    return BertTokenizerFast(vocab_file=str(vocab))


def sentences(n: int, seed: int) -> dict[str, list[Any]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        words = [rng.choice(WORDS[1:]) for _ in range(rng.randint(3, 9))]
        label = rng.random() < 0.5
        if label:
            words[rng.randrange(len(words))] = "good"
        texts.append(" ".join(words))
        labels.append(int(label))
    return {"text": texts, "label": labels}


def model_init(params: dict[str, Any]) -> Any:
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=int(params.get("hidden_size", 32)), num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=32, num_labels=2,
    )  # fmt: skip
    return BertForSequenceClassification(config)


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    logits, labels = eval_pred
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def task() -> Task:
    from datasets import Dataset
    from transformers import DataCollatorWithPadding

    tok = tokenizer()

    def tokenized(n: int, seed: int) -> Any:
        data = Dataset.from_dict(sentences(n, seed))
        return data.map(lambda batch: tok(batch["text"]), batched=True, remove_columns=["text"])

    return Task(
        model_init=model_init, train_dataset=tokenized(256, 0), eval_dataset=tokenized(64, 1),
        collate_fn=DataCollatorWithPadding(tok), compute_metrics=compute_metrics, processing_class=tok,
        name="tiny-bert",
    )  # fmt: skip
