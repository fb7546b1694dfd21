"""Resuming from a checkpoint: `resume_from_checkpoint=True` takes the latest one, a path takes that one.

A resumed run ends with exactly the weights and logged losses of an uninterrupted one (bitwise on CPU), even
from the middle of an epoch: the batches already seen are skipped without being loaded.

    python examples/resume.py [OUTPUT_DIR]
"""

import shutil
import sys
from pathlib import Path

import torch

from tunetrain import Trainer, TrainingArguments, load_task

output_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/examples/resume")
task = load_task("tunetrain.tasks.mnist1d:mlp")
args = TrainingArguments(
    output_dir=str(output_dir / "full"),
    max_steps=100,  # 55 steps an epoch: checkpoints 30 and 90 fall mid-epoch
    per_device_train_batch_size=64,
    learning_rate=3e-3,
    logging_steps=10,
    save_steps=30,
)
params = {"dropout": 0.1}

# the uninterrupted run, for comparison
full = Trainer(task, args)
full.train(trial=params)


def same_weights(trainer: Trainer) -> bool:
    reference = full.model.state_dict()
    return all(torch.equal(reference[k], v) for k, v in trainer.model.state_dict().items())


# a run killed after step 60: its output dir holds checkpoint-60 (and older ones); True takes the latest
killed = output_dir / "killed"
shutil.copytree(output_dir / "full" / "checkpoint-60", killed / "checkpoint-60")
resumed = Trainer(task, args.replace(output_dir=str(killed)))
output = resumed.train(resume_from_checkpoint=True, trial=params)
print(f"resumed from step 60 to step {output.global_step} in {output.metrics['train_runtime']}s")
print(f"resumed with True to the same weights: {same_weights(resumed)}")

# or from a given checkpoint directory
from_path = Trainer(task, args.replace(output_dir=str(output_dir / "from-path")))
from_path.train(resume_from_checkpoint=str(output_dir / "full" / "checkpoint-30"), trial=params)
print(f"resumed from checkpoint-30 to the same weights: {same_weights(from_path)}")
