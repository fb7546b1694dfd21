"""Hyperparameter search: the driver (`search`), one backend interface and its two backends, the components they
are built from (samplers, pruners, schedulers), and the `search:` section of an experiment file.

```
driver.py       search(): resume, restart or show a search; the backend's calls in order; storage failures
backend.py      Backend (prepare / can_resume / run / close) and the backends by name
config.py       SearchConfig: the `search:` section, checked
components.py   samplers, pruners and schedulers, built by name
trial.py        a trial's TrainingArguments, its budget, what is recorded of an evaluation
progress.py     the console lines a user watches
optuna.py       OptunaBackend: an in-process study
ray/            RayBackend, split by process: cluster, state, worker, driver, schedulers, protocol, backend
```

The package itself imports nothing: `tunetrain.search` is `tunetrain.tuning.driver.search`, and importing
`tunetrain.tuning.config` (as the experiment file does) imports no backend.
"""
