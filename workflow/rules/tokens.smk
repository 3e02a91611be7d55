# Stage `tokens`: the embed stage's encoder, every real token's last-layer state of each full text, into HDF5
# (the cross-attention fusion's input; docs/method.md §11.1).


rule tokens:
    input:
        sections="results/text/{source}/sections.parquet",
        structures="results/structures/{source}.parquet",
    output:
        tokens="results/tokens/{source}.h5",
    log:
        "logs/tokens/{source}.log",
    benchmark:
        "benchmarks/tokens/{source}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=lambda wildcards: gpu_resources(config["embed"]["device"])[0],
        gpu_share=lambda wildcards: gpu_resources(config["embed"]["device"])[1],
    params:
        encoder=settings_args("embed", names=settings.TOKEN_ENCODER_FIELDS),
        settings=settings_args("tokens"),
    shell:
        "crys-pipeline tokens --sections {input.sections} --structures {input.structures}"
        " {params.encoder} {params.settings} --threads {threads}"
        " --out {output.tokens} 2> {log}"
