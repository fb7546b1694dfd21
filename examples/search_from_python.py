"""A search from Python: the quickstart experiment, run on a local Ray (or in-process Optuna), then its best trial.

    python examples/search_from_python.py [STORAGE_DIR] [--backend optuna]

The same as `tunetrain search search_spaces/quickstart.yaml`. Rerunning it continues an unfinished search, or
shows a finished one; `restart=True` starts over.
"""

import sys
from pathlib import Path

import tunetrain

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"

storage = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "runs/examples"
backend = "optuna" if "--backend" in sys.argv and sys.argv[-1] == "optuna" else "ray"
result = tunetrain.search(
    QUICKSTART,
    overrides=["search.num_trials=8"],  # any key of the file, as with --set
    backend=backend,
    storage=storage,
)
best = result.best
print(f"{result.summary_line()}")
print(f"best trial {best.trial_id}: {result.metric}={best.metric:.4f} with {best.params}")
print(f"its best checkpoint: {best.checkpoint}")
print(result.table(3))
