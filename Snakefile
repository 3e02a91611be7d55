"""crys_pipeline: CrysMMNet (graph + Robocrystallographer text) as a cached Snakemake DAG.

Only configuration, validation and includes live here; every stage is one rule file in
workflow/rules/ calling one `crys-pipeline` subcommand.
"""

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


scattergather:
    describe=config["describe"]["shards"],


include: "workflow/rules/common.smk"


wildcard_constraints:
    source="|".join(config["sources"]),
    target=r"[A-Za-z0-9_]+",
    variant=r"crysmmnet|alignn|crystextnet|crysmmnet_global|crysmmnet_local|cgcnn|crysmmnet_cgcnn|megnet|crysmmnet_megnet|gatgnn|crysmmnet_gatgnn",
    regime=r"full|low20",
    seed=r"\d+",
    table=r"table[1-6]",
    scatteritem=r"\d+-of-\d+",


include: "workflow/rules/download.smk"
include: "workflow/rules/ingest.smk"
include: "workflow/rules/splits.smk"
include: "workflow/rules/describe.smk"
include: "workflow/rules/sections.smk"
include: "workflow/rules/embed.smk"
include: "workflow/rules/graphs.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/attention.smk"


rule all:
    default_target: True
    input:
        table_outputs(),
        "results/report.md",
