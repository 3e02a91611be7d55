# Stage `embed`: frozen transformer embeddings of every text view into HDF5.


rule embed:
    input:
        sections="results/text/{source}/sections.parquet",
        structures="results/structures/{source}.parquet",
    output:
        embeddings="results/embeddings/{source}.h5",
    log:
        "logs/embed/{source}.log",
    benchmark:
        "benchmarks/embed/{source}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=lambda wildcards: gpu_resources(config["embed"]["device"])[0],
        gpu_share=lambda wildcards: gpu_resources(config["embed"]["device"])[1],
    params:
        settings=settings_args("embed"),
    shell:
        "crys-pipeline embed --sections {input.sections} --structures {input.structures}"
        " {params.settings} --threads {threads}"
        " --out {output.embeddings} 2> {log}"
