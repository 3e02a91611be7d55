# Stage `embed`: frozen transformer embeddings of every text variant into HDF5.


rule embed:
    input:
        sections="results/text/{source}/sections.parquet",
        structures="results/structures/{source}.parquet",
    output:
        embeddings="results/embeddings/{source}.h5",
    params:
        model=config["embed"]["model"],
        revision=config["embed"]["revision"] or "",
        pooling=config["embed"]["pooling"],
        max_length=config["embed"]["max_length"],
        normalizer=config["embed"]["normalizer"],
        token_budget=config["embed"]["token_budget"] or 0,
        chunk_rows=config["embed"]["chunk_rows"],
        device=config["embed"]["device"],
    threads: 2
    resources:
        gpu=lambda wildcards: gpu_resources(config["embed"]["device"])[0],
        gpu_share=lambda wildcards: gpu_resources(config["embed"]["device"])[1],
    log:
        "logs/embed/{source}.log",
    benchmark:
        "benchmarks/embed/{source}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "crys-pipeline embed --sections {input.sections} --structures {input.structures} --model '{params.model}'"
        " --revision '{params.revision}' --pooling {params.pooling} --max-length {params.max_length}"
        " --normalizer {params.normalizer} --token-budget {params.token_budget}"
        " --chunk-rows {params.chunk_rows} --device {params.device} --threads {threads}"
        " --out {output.embeddings} 2> {log}"
