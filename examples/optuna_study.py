"""An Optuna study driving `train(trial=...)` by hand.

The search space samples params from the trial; the loop reports the evaluation metric at every evaluation and
raises `optuna.TrialPruned` when the pruner (Optuna's successive halving, i.e. ASHA) stops a weak trial.
The trial's value is its best evaluation, not its last.

    python examples/optuna_study.py [OUTPUT_DIR]
"""

import sys

import optuna

from tunetrain import SearchSpace, TrainingArguments, load_task, train

output_dir = sys.argv[1] if len(sys.argv) > 1 else "runs/examples/optuna_study"
task = load_task("tunetrain.tasks.mnist1d:mlp")
space = SearchSpace.from_mapping(
    {
        "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        "hidden_size": {"type": "int", "low": 32, "high": 256, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    }
)


def objective(trial: optuna.Trial) -> float:
    args = TrainingArguments(
        output_dir=f"{output_dir}/trial-{trial.number}",
        num_train_epochs=6,
        per_device_train_batch_size=64,
        eval_strategy="epoch",
        logging_strategy="no",
        save_strategy="no",
        metric_for_best_model="accuracy",
        report_to="none",
        disable_tqdm=True,
    )
    return train(task, args, space=space, trial=trial).metrics["best_metric"]


optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study(
    direction="maximize",
    sampler=optuna.samplers.TPESampler(seed=0),
    pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
)
study.optimize(objective, n_trials=8)
pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials)
print(f"best accuracy {study.best_value:.4f} with {study.best_params}; {pruned} of 8 trials pruned")
