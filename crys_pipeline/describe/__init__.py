"""Stage `describe`: Robocrystallographer text descriptions of crystal structures (docs/method.md §3.1).

Modules:

* `settings`: the fixed robocrys settings and the params stamped in every artifact;
* `fast`: the robocrys fast path (speed-ups that keep robocrys' text byte-identical);
* `engine`: robocrys' pipeline on one structure, as run inside a worker process;
* `pool`: a generic pool of worker processes with a wall-clock limit per item;
* `stage`: the describe pool, one scattergather shard, and the merge of the shards.
"""

from crys_pipeline.describe.settings import CONDENSER_KWARGS, PYTHON_HASH_SEED
from crys_pipeline.describe.stage import (
    DescribePool,
    describe_shard,
    describe_structures,
    merge_shards,
    tool_versions,
)

__all__ = [
    "CONDENSER_KWARGS",
    "PYTHON_HASH_SEED",
    "DescribePool",
    "describe_shard",
    "describe_structures",
    "merge_shards",
    "tool_versions",
]
