"""Population Based Training from Python: a small population on the quickstart's task, then its winner re-trained
from its lineage, exactly.

    python examples/pbt.py [STORAGE_DIR]

Each trial's `parent` lists its exploits (the donor and the donor's step it went on from); `tunetrain export`
writes an exploited trial's lineage as a `schedule`, and `tunetrain train` of the export replays it.
"""

import json
import sys
from pathlib import Path

import tunetrain
from tunetrain.cli import main as tunetrain_cli

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"

storage = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/examples")
pbt = "{type: pbt, perturbation_interval: 2, hyperparam_mutations: [learning_rate, weight_decay]}"
result = tunetrain.search(
    QUICKSTART,
    overrides=["name=quickstart-pbt", "search.num_trials=4", f"search.scheduler={pbt}", "train.num_train_epochs=6"],
    storage=str(storage),
)
print(result.summary_line())
for trial in result.trials:
    exploits = ", ".join(f"{e['trial_id']}@{e['step']}" for e in trial.parent or []) or "none"
    print(f"trial {trial.trial_id}: {result.metric}={trial.best_metric:.3f}, exploited: {exploits}")

exploited = [trial for trial in result.ranked() if trial.parent]
chosen = exploited[0] if exploited else result.best
export = chosen.export(storage / "pbt-winner", force=True)
print(f"exported trial {chosen.trial_id} to {export}")
tunetrain_cli(["train", str(export), "--output-dir", str(storage / "pbt-winner-again"), "--overwrite-output-dir"])
again = json.loads((storage / "pbt-winner-again" / "metrics.json").read_text())
print(
    f"re-trained from its lineage: best {again['best_metric']} at step {again['best_global_step']} "
    f"(the search: {chosen.best_metric} at step {chosen.best_step})"
)
