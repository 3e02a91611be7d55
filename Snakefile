"""crys_pipeline: CrysMMNet (graph + Robocrystallographer text) as a cached Snakemake DAG.

Only configuration, validation, the live-run guard of `--unlock` and includes live here (the schema of
the settings blocks and the variant names come from crys_pipeline/settings.py and crys_pipeline/variants.py);
every stage is one rule file in workflow/rules/ calling one `crys-pipeline` subcommand.
"""

import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import min_version

from crys_pipeline.config import validate_config
from crys_pipeline.lifecycle import lock_notice, unlock_refusal
from crys_pipeline.variants import wildcard_pattern

min_version("9.0")


if refusal := unlock_refusal(sys.argv, Path.cwd()):  # --unlock during a live run would free its lock
    raise WorkflowError(refusal)
if notice := lock_notice(sys.argv, Path.cwd()):
    logger.warning(notice)


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
include: "workflow/rules/tokens.smk"
include: "workflow/rules/graphs.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/comparisons.smk"
include: "workflow/rules/attention.smk"
include: "workflow/rules/fusion.smk"


rule all:
    default_target: True
    input:
        table_outputs(),
        "results/report.md",
