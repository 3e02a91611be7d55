# Stage `train`: one job per (source, target, variant, regime, seed).
# GPU use (see gpu_resources in common.smk): on a machine without a GPU a plain CPU job limited only
# by --cores; with train.jobs_per_gpu = N > 1, N local jobs share a card through the gpu_share cap (on
# Slurm every GPU job gets a card of its own).


rule train:
    input:
        unpack(train_inputs),
    output:
        summary="results/train/{source}/{target}/{variant}/{regime}/seed{seed}/summary.json",
        model="results/train/{source}/{target}/{variant}/{regime}/seed{seed}/model.pt",
        model_json="results/train/{source}/{target}/{variant}/{regime}/seed{seed}/model.json",
        metrics="results/train/{source}/{target}/{variant}/{regime}/seed{seed}/metrics.jsonl",
        predictions="results/train/{source}/{target}/{variant}/{regime}/seed{seed}/predictions.parquet",
    params:
        graphs=lambda w, input: input.get("graphs", ""),
        embeddings=lambda w, input: input.get("embeddings", ""),
        tokens=lambda w, input: input.get("tokens", ""),
        settings=settings_args("train"),
    threads: 1
    resources:
        gpu=lambda wildcards: gpu_resources(config["train"]["device"], config["train"]["jobs_per_gpu"])[0],
        gpu_share=lambda wildcards: gpu_resources(config["train"]["device"], config["train"]["jobs_per_gpu"])[1],
    log:
        "logs/train/{source}/{target}/{variant}/{regime}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{source}/{target}/{variant}/{regime}/seed{seed}.tsv"
    conda:
        "../../envs/torch.yaml"
    shell:
        "crys-pipeline train --structures {input.structures} --split {input.split}"
        " --graphs '{params.graphs}' --embeddings '{params.embeddings}' --tokens '{params.tokens}'"
        " --target {wildcards.target} --variant {wildcards.variant} --seed {wildcards.seed}"
        " {params.settings} --threads {threads}"
        " --out-dir results/train/{wildcards.source}/{wildcards.target}/{wildcards.variant}/{wildcards.regime}/seed{wildcards.seed}"
        " 2> {log}"
