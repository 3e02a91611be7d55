# Stage `graphs`: ALIGNN k-nearest crystal graphs in Parquet shards (line graphs are built per batch).


rule graphs:
    input:
        structures="results/structures/{source}.parquet",
    output:
        shards=directory("results/graphs/{source}"),
    log:
        "logs/graphs/{source}.log",
    benchmark:
        "benchmarks/graphs/{source}.tsv"
    conda:
        "../../envs/describe.yaml"
    threads: 2
    params:
        settings=settings_args("graphs"),
    shell:
        "crys-pipeline graphs --structures {input.structures} {params.settings} --workers {threads} --out-dir {output.shards} 2> {log}"
