"""The Ray Tune backend: `train()` as a function trainable, Optuna's samplers through OptunaSearch, ASHA.

Split by the process each part runs in:
- `cluster`: the Ray a search runs on (a local one, or a cluster joined by address) and the checks made there.
- `state`: Ray's own saved state of a search, restored only from a copy sealed with the user's key, and the token
  checkpoints it may have deleted early.
- `worker`: inside a trial (a Ray worker): the trainable, the trial's checkpoints in the experiment, its reports.
- `driver`: in the driver: the searcher and the bookkeeper; `schedulers`: our ASHA; the three share one
  `SearchState` (`search_state`), passed to each when it is built.
- `protocol`: what crosses between the two: a report's keys, `ended.json`.
- `backend`: `RayBackend`, which wires the Tuner from these.

This package imports nothing itself; all but `protocol`, `search_state` and `state` import Ray, and
`tunetrain.tuning.driver` sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before the first of them for a local Ray (Ray
reads it when it is imported).
"""
