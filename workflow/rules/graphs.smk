# Stage `graphs`: ALIGNN k-nearest crystal graphs in Parquet shards (line graphs are built per batch).


rule graphs:
    input:
        structures="results/structures/{source}.parquet",
    output:
        shards=directory("results/graphs/{source}"),
    params:
        settings=settings_args("graphs"),
    threads: 2
    log:
        "logs/graphs/{source}.log",
    benchmark:
        "benchmarks/graphs/{source}.tsv"
    conda:
        "../../envs/describe.yaml"
    shell:
        "crys-pipeline graphs --structures {input.structures} {params.settings} --workers {threads} --out-dir {output.shards} 2> {log}"
