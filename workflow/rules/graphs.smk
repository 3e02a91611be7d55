# Stage `graphs`: ALIGNN k-nearest crystal graphs in Parquet shards (line graphs are built per batch).


rule graphs:
    input:
        structures="results/structures/{source}.parquet",
    output:
        shards=directory("results/graphs/{source}"),
    params:
        cutoff=config["graphs"]["cutoff"],
        max_neighbors=config["graphs"]["max_neighbors"],
        canonize="--canonize" if config["graphs"]["use_canonize"] else "--no-canonize",
        dedup="--dedup-self-images" if config["graphs"]["dedup_self_images"] else "--no-dedup-self-images",
        shard_size=config["graphs"]["shard_size"],
    threads: 2
    log:
        "logs/graphs/{source}.log",
    benchmark:
        "benchmarks/graphs/{source}.tsv"
    conda:
        "../../envs/describe.yaml"
    shell:
        "crys-pipeline graphs --structures {input.structures} --cutoff {params.cutoff}"
        " --max-neighbors {params.max_neighbors} {params.canonize} {params.dedup}"
        " --shard-size {params.shard_size} --workers {threads} --out-dir {output.shards} 2> {log}"
