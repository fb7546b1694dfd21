#!/usr/bin/env bash
# GPU checks for issue 14, as one device run (needs the bundle: ../shared/tools/device-bundle .devwhl, plus the
# wheels mnist1d pytest pluggy iniconfig pyyaml psutil hypothesis attrs sortedcontainers for Python 3.12, and
# ~/.cache/tunetrain/*.npz copied to .devwhl/cache; run with carry [".devwhl"]: bash bench/gpu_check.sh).
# What it checks: the loop's tests on a GPU, a 2-trial search on one GPU (gpu 0.5 each), data-parallel scaling on
# the machine's CPUs (1 vs 2 vs 4 processes), Ray Train's start-up. About 8 minutes.
set -u
export PYTHONUNBUFFERED=1 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 TUNETRAIN_CACHE_DIR=$PWD/.devwhl/cache \
  TUNETRAIN_KEY_FILE=/tmp/tt-key/state.key RAY_USAGE_STATS_ENABLED=0
pip install -q --no-index --no-deps --target /tmp/site .devwhl/*.whl && tar xJf .devwhl/ray-slim.tar.xz -C /tmp/site
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
python -c "import torch, accelerate, ray, optuna; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'accelerate', accelerate.__version__, 'ray', ray.__version__)"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
echo "=== 1. loop tests on the GPU"
timeout 150 python -m pytest -q -p no:cacheprovider -m "not e2e" tests/test_loop.py tests/test_checkpoint.py tests/test_ddp.py 2>&1 | tail -6
echo "=== 2. two trials on one GPU (gpu 0.5 each), MNIST-1D CNN"
mkdir -p /tmp/gpu && python - <<'PY'
import yaml
e = yaml.safe_load(open("search_spaces/mnist1d_cnn.yaml"))
e["name"] = "gpu2"
e["train"]["num_train_epochs"] = 10
e["search"].update(num_trials=2, max_concurrent_trials=2, scheduler="none", storage="/tmp/gpu/runs",
                   resources_per_trial={"cpu": 4, "gpu": 0.5})
yaml.safe_dump(e, open("/tmp/gpu/gpu2.yaml", "w"))
PY
start=$(date +%s.%N)
timeout 200 python -m tunetrain.cli search /tmp/gpu/gpu2.yaml > /tmp/gpu/search.out 2> /tmp/gpu/search.err; echo "rc=$?"
end=$(date +%s.%N); echo "search wall: $(python -c "print(round($end - $start, 1))") s"
tail -4 /tmp/gpu/search.err; tail -1 /tmp/gpu/search.out
python - <<'PY'
from tunetrain.results import read_results
import json, glob
r = read_results("/tmp/gpu/runs/gpu2")
for t in r.trials:
    print(t.trial_id, t.status, t.evaluations, round(t.best_metric or 0, 4), round(t.ended_at - t.started_at, 1), "s", t.num_processes)
for state in sorted(glob.glob("/tmp/gpu/runs/gpu2/trials/*/checkpoint-*/trainer_state.json"))[-1:]:
    print("device check:", json.load(open(state)).get("num_threads"))
PY
echo "=== 3. data-parallel scaling on the CPUs (gloo), 1 vs 2 and 1 vs 4 processes"
timeout 120 python bench/ddp_scaling.py --nproc 2 --threads 4 --steps 100
timeout 120 python bench/ddp_scaling.py --nproc 4 --threads 2 --steps 100
echo "=== 4. Ray Train start-up, 2 workers"
timeout 100 python bench/ddp_scaling.py --ray --nproc 2 --repeats 3
