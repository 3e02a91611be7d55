# Shared helpers: target lists and params rendering for the rules. No stage logic lives here;
# the functions only read `config`.

import json


TEXT_VARIANT = {"crysmmnet": "full", "crysmmnet_global": "global", "crysmmnet_local": "local",
                "crystextnet": "full", "crysmmnet_cgcnn": "full"}
GRAPH_VARIANTS = {"crysmmnet", "alignn", "crysmmnet_global", "crysmmnet_local", "cgcnn", "crysmmnet_cgcnn"}


def source_cfg(wildcards):
    """The config block of the `{source}` wildcard."""
    return config["sources"][wildcards.source]


def targets_json(wildcards):
    """The source's target definitions as one JSON string (a rule param)."""
    return json.dumps(source_cfg(wildcards)["targets"], sort_keys=True)


def table_targets(table):
    """Target names of one table block, expanding 'all'."""
    block = config["tables"][table]
    names = block["targets"]
    return list(config["sources"][block["source"]]["targets"]) if names == "all" else names


def run_dir(source, target, variant, regime, seed):
    """Folder of one training job."""
    return f"results/train/{source}/{target}/{variant}/{regime}/seed{seed}"


def table_runs(wildcards):
    """summary.json of every run one table is assembled from."""
    block = config["tables"][wildcards.table]
    return [f"{run_dir(block['source'], t, v, block['regime'], s)}/summary.json"
            for t in table_targets(wildcards.table)
            for v in block["variants"]
            for s in config["train"]["seeds"]]


def train_inputs(wildcards):
    """Exactly the artifacts one training job reads: graphs only for graph variants, embeddings only with text."""
    inputs = {
        "structures": f"results/structures/{wildcards.source}.parquet",
        "split": f"results/splits/{wildcards.source}/{wildcards.target}/{wildcards.regime}.json",
    }
    if wildcards.variant in GRAPH_VARIANTS:
        inputs["graphs"] = f"results/graphs/{wildcards.source}"
    if wildcards.variant in TEXT_VARIANT:
        inputs["embeddings"] = f"results/embeddings/{wildcards.source}.h5"
    return inputs


def table_outputs():
    """Every configured table (CSV and Markdown)."""
    return expand("results/{table}.{ext}", table=sorted(config["tables"]), ext=["csv", "md"])


def machine_has_gpu():
    """Whether this machine shows an NVIDIA GPU to its jobs (a device node or nvidia-smi; CUDA_VISIBLE_DEVICES honoured)."""
    import glob
    import os
    import shutil

    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    device_nodes = glob.glob(os.path.join(os.sep, "dev", "nvidia[0-9]*"))
    return bool(device_nodes) or shutil.which("nvidia-smi") is not None


def uses_gpu(device):
    """Whether a job with config `device` (auto | cpu | cuda) runs on a GPU.

    auto: on a cluster (jobs submitted elsewhere, e.g. Slurm) yes; locally when this machine has one.
    """
    if device == "auto":
        return workflow.non_local_exec or machine_has_gpu()
    return device == "cuda"


def gpu_resources(device, jobs_per_gpu=1):
    """(gpu, gpu_share) a job asks for: whole GPUs, and hundredths of one.

    A CPU job asks for neither, so only --cores limits it. A GPU job asks for 100 // jobs_per_gpu
    hundredths (profiles/default caps gpu_share at 100 per machine or Slurm job, so jobs_per_gpu jobs
    share a card) and for one whole GPU when it does not share; sharing jobs ask for none locally (the
    hundredths do the counting) and, on a cluster, get their card through the `train_gpu` group's
    --gpus=1 (see `slurm_extra`).
    """
    if not uses_gpu(device):
        return 0, 0
    share = 100 // jobs_per_gpu
    return (1 if jobs_per_gpu == 1 else 0), share


def slurm_extra(device, jobs_per_gpu=1):
    """Extra sbatch flags: `--gpus=1` for a Slurm job holding a group of GPU-sharing training jobs."""
    return "--gpus=1" if uses_gpu(device) and jobs_per_gpu > 1 else ""
