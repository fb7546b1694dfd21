"""A sweep on a Ray cluster: the MNIST-1D CNN experiment, trials spread over every node.

Start the cluster first (token authentication keeps strangers off it), with a storage directory every node
mounts (NFS), or an object store URI:

    export RAY_AUTH_MODE=token                                  # on every node, with the same token
    ray start --head --port 6379                                # on the head node
    ray start --address HEAD_IP:6379                            # on each worker node
    python examples/cluster_sweep.py /shared/nfs/runs           # or s3://bucket/runs; on the head node

tunetrain checks that every node can read the storage before it starts, and that some node can hold one
trial's resources (here 1 CPU and a quarter of a GPU, when the cluster has GPUs).
"""

import sys
from pathlib import Path

import ray

import tunetrain

CNN = Path(__file__).resolve().parent.parent / "search_spaces" / "mnist1d_cnn.yaml"

storage = sys.argv[1] if len(sys.argv) > 1 else "/shared/runs"
address = sys.argv[2] if len(sys.argv) > 2 else "auto"
ray.init(address=address)
has_gpus = ray.cluster_resources().get("GPU", 0) > 0
ray.shutdown()  # tunetrain.search connects by itself

result = tunetrain.search(
    CNN,
    address=address,
    storage=storage,
    gpus_per_trial=0.25 if has_gpus else None,  # four trials share each GPU
    overrides=["search.num_trials=64", "search.max_concurrent_trials=16"],
)
print(result.table(10))
