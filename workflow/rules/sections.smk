# Stage `sections`: full / global / local texts from the robocrys parts.


rule sections:
    input:
        descriptions="results/text/{source}/descriptions.parquet",
        structures="results/structures/{source}.parquet",
    output:
        sections="results/text/{source}/sections.parquet",
    log:
        "logs/sections/{source}.log",
    conda:
        "../../envs/describe.yaml"
    params:
        settings=settings_args("sections"),
    shell:
        "crys-pipeline sections --descriptions {input.descriptions} --structures {input.structures} {params.settings}"
        " --out {output.sections} 2> {log}"
