"""crys_pipeline: CrysMMNet (graph + Robocrystallographer text) as a cached Snakemake DAG.

Only configuration, validation and includes live here (the schema of the settings blocks and the variant
names come from crys_pipeline/settings.py and crys_pipeline/variants.py); every stage is one rule file in
workflow/rules/ calling one `crys-pipeline` subcommand.
"""

from pathlib import Path

from snakemake.utils import min_version

from crys_pipeline.config import validate_config
from crys_pipeline.variants import wildcard_pattern

min_version("9.0")


configfile: "config.yaml"


validate_config(config, Path(workflow.source_path("workflow/schemas/config.schema.yaml")))


scattergather:
    describe=config["describe"]["shards"],


include: "workflow/rules/common.smk"


wildcard_constraints:
    source="|".join(config["sources"]),
    target=r"[A-Za-z0-9_]+",
    variant=wildcard_pattern(),
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
include: "workflow/rules/comparisons.smk"
include: "workflow/rules/attention.smk"


rule all:
    default_target: True
    input:
        table_outputs(),
        "results/report.md",
