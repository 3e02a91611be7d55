# Shared helpers: target lists and params rendering for the rules. No stage logic lives here;
# the functions only read `config`.

import json


TEXT_VARIANT = {"crysmmnet": "full", "crysmmnet_global": "global", "crysmmnet_local": "local",
                "crystextnet": "full", "crysmmnet_cgcnn": "full", "crysmmnet_megnet": "full",
                "crysmmnet_gatgnn": "full"}
GRAPH_VARIANTS = {"crysmmnet", "alignn", "crysmmnet_global", "crysmmnet_local", "cgcnn", "crysmmnet_cgcnn",
                  "megnet", "crysmmnet_megnet", "gatgnn", "crysmmnet_gatgnn"}


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
