"""Mixed precision and gradient accumulation.

bf16 autocast runs on CPUs and recent GPUs; fp16 (with a gradient scaler) needs a CUDA GPU. Accumulating 4
micro-batches of 32 makes the same update as one batch of 128, with a quarter of the activation memory.

    python examples/amp_accumulation.py [OUTPUT_DIR]
"""

import sys

import torch

from tunetrain import Trainer, TrainingArguments, load_task

output_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/examples/amp_accumulation"
task = load_task("tunetrain.tasks.mnist1d:cnn")
on_gpu = torch.cuda.is_available()
args = TrainingArguments(
    output_dir=output_dir,
    num_train_epochs=3,
    per_device_train_batch_size=32,
    gradient_accumulation_steps=4,  # effective batch 128
    learning_rate=3e-3,
    warmup_ratio=0.1,
    fp16=on_gpu,
    bf16=not on_gpu,
    eval_strategy="epoch",
    logging_strategy="epoch",
    save_strategy="no",
)
trainer = Trainer(task, args)
output = trainer.train()
precision = "fp16" if on_gpu else "bf16"
print(f"{precision}: {output.global_step} optimizer steps, eval accuracy {output.metrics['eval_accuracy']:.4f}")
