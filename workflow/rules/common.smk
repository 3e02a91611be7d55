# Shared helpers: config checks the schema cannot express, target lists and params rendering for the
# rules. No stage logic lives here; the functions only read `config` (and the snapshot folder's listing, or a
# folder source's id_prop table).

import json
from pathlib import Path

from crys_pipeline import settings
from crys_pipeline.run_id import RunId
from crys_pipeline.variants import VARIANTS


def settings_args(block, names=None):
    """The config block `block` as its stage's command-line flags (a plain string param: a change reruns the stage)."""
    return settings.cli_args(settings.STAGES[block], config[block], names)


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


def table_runs(wildcards):
    """summary.json of every run one table is assembled from."""
    block = config["tables"][wildcards.table]
    return [
        str(RunId(block["source"], t, v, block["regime"], s).folder() / "summary.json")
        for t in table_targets(wildcards.table)
        for v in block["variants"]
        for s in config["train"]["seeds"]
    ]


def table_spec(wildcards):
    """The table block of `{table}` as one JSON string (a rule param)."""
    return json.dumps(config["tables"][wildcards.table], sort_keys=True)


def units_of(source):
    """{target: unit} of one source, in the config's order."""
    return {target: spec["unit"] for target, spec in config["sources"][source]["targets"].items()}


def table_units(wildcards):
    """{target: unit} of the source of `{table}` as one JSON string (a rule param; the config's target order)."""
    return json.dumps(units_of(config["tables"][wildcards.table]["source"]))


def report_specs(wildcards):
    """The blocks of the report's tables as one JSON string {table: block} (a rule param)."""
    return json.dumps({t: config["tables"][t] for t in config["report"]["tables"]}, sort_keys=True)


def source_units(wildcards):
    """{source: {target: unit}} of every source as one JSON string (a rule param; the config's target order)."""
    return json.dumps({source: units_of(source) for source in config["sources"]})


def report_runs(wildcards):
    """summary.json of every run of the report's tables (each once, sorted)."""
    from types import SimpleNamespace

    return sorted({run for t in config["report"]["tables"] for run in table_runs(SimpleNamespace(table=t))})


def train_inputs(wildcards):
    """Exactly the artifacts one training job reads: graphs only for graph variants, embeddings only with text,
    token states only for cross-attention variants."""
    inputs = {
        "structures": f"results/structures/{wildcards.source}.parquet",
        "split": f"results/splits/{wildcards.source}/{wildcards.target}/{wildcards.regime}.json",
    }
    variant = VARIANTS[wildcards.variant]
    if variant.graph_encoder:
        inputs["graphs"] = f"results/graphs/{wildcards.source}"
    if variant.text_view:
        inputs["embeddings"] = f"results/embeddings/{wildcards.source}.h5"
    if variant.tokens:
        inputs["tokens"] = f"results/tokens/{wildcards.source}.h5"
    return inputs


def table_outputs():
    """Every configured table (CSV and Markdown)."""
    return expand("results/{table}.{ext}", table=sorted(config["tables"]), ext=["csv", "md"])


def stratify_target(wildcards):
    """The target a subset is stratified by: `stratify_target`, or a folder source's first target."""
    src = source_cfg(wildcards)
    return src.get("stratify_target") or next(iter(src["targets"]))


def split_method(wildcards):
    """The split method of `{target}`: `auto` resolved to official (jarvis, mp, a folder with split labels) or random123."""
    from crys_pipeline.sources.folder import has_split_labels

    src = source_cfg(wildcards)
    method = src["targets"][wildcards.target].get("split", "auto")
    if method != "auto":
        return method
    if src["provider"] != "folder":
        return "official"
    labelled = has_split_labels(Path(src["root_dir"]), src.get("id_prop", "id_prop.csv"), src.get("split_ids"))
    return "official" if labelled else "random123"


def download_args(wildcards):
    """The `crys-pipeline download` options naming where the source's snapshot is (quoted shell words)."""
    import shlex

    src = source_cfg(wildcards)
    if src["provider"] == "folder":
        split_ids = json.dumps(src.get("split_ids"), sort_keys=True)
        return (
            f"--root-dir {shlex.quote(src['root_dir'])} --id-prop {shlex.quote(src.get('id_prop', 'id_prop.csv'))}"
            f" --file-format {src.get('file_format', 'auto')} --split-ids {shlex.quote(split_ids)}"
        )
    return f"--jarvis-key {src['jarvis_key']} --snapshot-dir {shlex.quote(src.get('snapshot_dir') or '')}"


def snapshot_files(wildcards):
    """The local snapshot file(s) `download` reads (its inputs), so editing one reruns download and ingest.

    A folder source: its id_prop table and every listed file that exists. Otherwise empty when the source
    downloads (`snapshot_dir: null`) or the folder does not hold it (then download).
    """
    from crys_pipeline.download import local_snapshot_candidates
    from crys_pipeline.sources.folder import listed_files

    src = source_cfg(wildcards)
    if src["provider"] == "folder":
        return [str(p) for p in listed_files(Path(src["root_dir"]), src.get("id_prop", "id_prop.csv"))]
    folder = src.get("snapshot_dir")
    if not folder:
        return []
    return [str(p) for p in local_snapshot_candidates(Path(folder), source_cfg(wildcards)["provider"])]


def snapshot_checksum(wildcards):
    """One sha256 over the contents of the source's snapshot files: a `download` param, so an edit that keeps a
    file's modification time (`touch -r`, a restored backup) still reruns download. A function of the wildcards
    only: Snakemake leaves a param whose function takes `input` out of its params rerun check."""
    from crys_pipeline.download import snapshot_digest

    return snapshot_digest(snapshot_files(wildcards))


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
    Rules call it per job (a resource callable): only then is the executor known, while the Snakefile
    is parsed `workflow.non_local_exec` is still False on Slurm too.
    """
    if device == "auto":
        return workflow.non_local_exec or machine_has_gpu()
    return device == "cuda"


def gpu_resources(device, jobs_per_gpu=1):
    """(gpu, gpu_share) a job asks for: whole GPUs, and hundredths of one.

    A CPU job asks for neither, so only --cores limits it. On a cluster a GPU job asks for one card
    (`gpu=1` becomes `--gpus=1`): the Slurm executor plugin forbids GPU flags in `slurm_extra`, so cards
    are not shared there. Locally a GPU job asks for 100 // jobs_per_gpu hundredths (profiles/default
    caps gpu_share at 100 per card, so jobs_per_gpu jobs share it) and for one whole GPU only when it
    does not share.
    """
    if not uses_gpu(device):
        return 0, 0
    if workflow.non_local_exec or jobs_per_gpu == 1:
        return 1, 100
    return 0, 100 // jobs_per_gpu


def fusion_runs(wildcards):
    """summary.json of every run of the `fusion` table."""
    from types import SimpleNamespace

    return table_runs(SimpleNamespace(table="fusion"))


def fusion_spec(wildcards):
    """The `fusion` table block as one JSON string (a rule param)."""
    return json.dumps(config["tables"]["fusion"], sort_keys=True)


def fusion_units(wildcards):
    """{target: unit} of the `fusion` table's source as one JSON string (a rule param; the config's target order)."""
    return json.dumps(units_of(config["tables"]["fusion"]["source"]))


def fusion_attention(wildcards):
    """The cross-attention summaries of the fusion table: per property, its first seed's run of each variant that
    reads every token (docs/method.md §11.4), in the run's folder below results/fusion/attention/."""
    block = config["tables"]["fusion"]
    seed = config["train"]["seeds"][0]
    return [
        f"results/fusion/attention/{RunId(block['source'], t, v, block['regime'], seed).key}/summary.csv"
        for t in table_targets("fusion")
        for v in block["variants"]
        if VARIANTS[v].tokens == "all"
    ]


def fusion_cls_attention(wildcards):
    """The [CLS] attention summary shown beside the cross-attention shares (none without a cross-attention run)."""
    source = config["tables"]["fusion"]["source"]
    return [f"results/attention/{source}/summary.csv"] if fusion_attention(wildcards) else []


def report_fusion(wildcards):
    """The fusion section of the report, when the report covers the `fusion` table."""
    return ["results/fusion.md"] if "fusion" in config["report"]["tables"] else []
