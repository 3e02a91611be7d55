# Stage `describe`: Robocrystallographer descriptions, fanned out over scattergather shards.


rule describe:
    input:
        structures="results/structures/{source}.parquet",
    output:
        shard="results/text/{source}/describe/{scatteritem}.parquet",
    log:
        "logs/describe/{source}/{scatteritem}.log",
    benchmark:
        "benchmarks/describe/{source}/{scatteritem}.tsv"
    conda:
        "../../envs/describe.yaml"
    threads: 2
    params:
        settings=settings_args("describe"),
    shell:
        "crys-pipeline describe shard --structures {input.structures} --shard {wildcards.scatteritem}"
        " {params.settings} --workers {threads} --out {output.shard} 2> {log}"


rule describe_gather:
    input:
        shards=gather.describe("results/text/{{source}}/describe/{scatteritem}.parquet"),
        structures="results/structures/{source}.parquet",
    output:
        descriptions="results/text/{source}/descriptions.parquet",
    log:
        "logs/describe/{source}/gather.log",
    conda:
        "../../envs/describe.yaml"
    shell:
        "crys-pipeline describe merge --structures {input.structures} --out {output.descriptions}"
        " {input.shards} 2> {log}"
