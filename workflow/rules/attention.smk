# Stage `attention`: [CLS] attention of the frozen text encoder (paper section 4.4). The encoder runs where
# embed's does (embed.device): a GPU through gpu_resources in common.smk, as embed and train ask for one.
# attention_summary is the measured statement (share of attention per token category and layer over a
# sample); attention renders one material on request, e.g. results/attention/mp_2018/mp-1217910_L5.png.


rule attention_summary:
    input:
        sections="results/text/{source}/sections.parquet",
    output:
        csv="results/attention/{source}/summary.csv",
        png="results/attention/{source}/summary.png",
        shares="results/attention/{source}/shares.parquet",
    log:
        "logs/attention/{source}.summary.log",
    benchmark:
        "benchmarks/attention/{source}.summary.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=lambda wildcards: gpu_resources(config["embed"]["device"])[0],
        gpu_share=lambda wildcards: gpu_resources(config["embed"]["device"])[1],
    params:
        settings=settings_args("attention", names=("text_view", "sample", "seed")),
        encoder=settings_args("embed", names=settings.ENCODER_FIELDS),
    shell:
        "crys-pipeline attention-summary --sections {input.sections} {params.settings} {params.encoder}"
        " --threads {threads} --out-csv {output.csv} --out-png {output.png} --out-shares {output.shares}"
        " 2> {log}"


rule attention:
    input:
        sections="results/text/{source}/sections.parquet",
    output:
        png="results/attention/{source}/{material_id}_L{layer}.png",
        table="results/attention/{source}/{material_id}_L{layer}.parquet",
    log:
        "logs/attention/{source}/{material_id}_L{layer}.log",
    wildcard_constraints:
        material_id=r"[A-Za-z0-9.-]+",
        layer=r"\d+",
    conda:
        "../../envs/torch.yaml"
    threads: 2
    resources:
        gpu=lambda wildcards: gpu_resources(config["embed"]["device"])[0],
        gpu_share=lambda wildcards: gpu_resources(config["embed"]["device"])[1],
    params:
        settings=settings_args("attention", names=("text_view",)),
        encoder=settings_args("embed", names=settings.ENCODER_FIELDS),
    shell:
        "crys-pipeline attention --source {wildcards.source} --id {wildcards.material_id}"
        " --layer {wildcards.layer} {params.settings} --sections {input.sections} {params.encoder}"
        " --threads {threads}"
        " --out-png {output.png} --out-table {output.table} 2> {log}"
