"""Training with evaluation and best-model tracking.

Evaluates on the held-out validation split every epoch, keeps the best checkpoint by accuracy (rotation never
deletes it), stops after 3 evaluations without improvement, and loads the best weights at the end.

    python examples/with_evaluation.py [OUTPUT_DIR]
"""

import sys

from tunetrain import Trainer, TrainingArguments, load_task

output_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/examples/with_evaluation"
task = load_task("tunetrain.tasks.mnist1d:mlp")
args = TrainingArguments(
    output_dir=output_dir,
    num_train_epochs=8,
    per_device_train_batch_size=64,
    learning_rate=3e-3,
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    logging_strategy="epoch",
    metric_for_best_model="accuracy",  # eval_accuracy; greater is better (the default for a non-loss metric)
    load_best_model_at_end=True,
    early_stopping_patience=3,
)
trainer = Trainer(task, args)
output = trainer.train()
print(f"best eval accuracy {output.metrics['best_metric']:.4f} at step {output.metrics['best_global_step']}")
print(f"best checkpoint: {trainer.state.best_model_checkpoint}")
print(f"after loading the best model: {trainer.evaluate()['eval_accuracy']:.4f}")
