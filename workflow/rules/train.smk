# Stage `train`: one job per run (source, target, variant, regime, seed), its folder RunId.PATTERN
# (crys_pipeline/run_id.py, the one place the run folder is written).
# GPU use (see gpu_resources in common.smk): on a machine without a GPU a plain CPU job limited only
# by --cores; with train.jobs_per_gpu = N > 1, N local jobs share a card through the gpu_share cap (on
# Slurm every GPU job gets a card of its own).


rule train:
    input:
        unpack(train_inputs),
    output:
        summary=f"{RunId.PATTERN}/summary.json",
        model=f"{RunId.PATTERN}/model.pt",
        model_json=f"{RunId.PATTERN}/model.json",
        metrics=f"{RunId.PATTERN}/metrics.jsonl",
        predictions=f"{RunId.PATTERN}/predictions.parquet",
    log:
        f"logs/train/{RunId.KEY}.log",
    benchmark:
        f"benchmarks/train/{RunId.KEY}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        gpu=lambda wildcards: gpu_resources(config["train"]["device"], config["train"]["jobs_per_gpu"])[0],
        gpu_share=lambda wildcards: gpu_resources(config["train"]["device"], config["train"]["jobs_per_gpu"])[1],
    params:
        out_dir=lambda w: RunId.of(w).folder(),
        graphs=lambda w, input: input.get("graphs", ""),
        embeddings=lambda w, input: input.get("embeddings", ""),
        tokens=lambda w, input: input.get("tokens", ""),
        settings=settings_args("train"),
        model=settings_args("model"),
    shell:
        "crys-pipeline train --structures {input.structures} --split {input.split}"
        " --graphs '{params.graphs}' --embeddings '{params.embeddings}' --tokens '{params.tokens}'"
        " --target {wildcards.target} --variant {wildcards.variant} --seed {wildcards.seed}"
        " {params.settings} {params.model} --threads {threads}"
        " --out-dir {params.out_dir}"
        " 2> {log}"
