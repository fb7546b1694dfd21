"""Basic usage: train the built-in MNIST-1D MLP with fixed params, then score the test split.

python examples/basic.py [OUTPUT_DIR]
"""

import sys

from tunetrain import Trainer, TrainingArguments, load_task

output_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/examples/basic"
task = load_task("tunetrain.tasks.mnist1d:mlp")
args = TrainingArguments(
    output_dir=output_dir,
    num_train_epochs=5,
    per_device_train_batch_size=64,
    learning_rate=3e-3,
    logging_steps=50,
    save_strategy="no",
)
trainer = Trainer(task, args)
# params that name a TrainingArguments field override it; the rest (hidden_size) go to the model factory
output = trainer.train(trial={"hidden_size": 128, "weight_decay": 0.01})
print(f"trained {output.global_step} steps, mean loss {output.training_loss:.4f}")
print(trainer.evaluate(task.test_dataset, metric_key_prefix="test"))
