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
        epochs=config["train"]["epochs"],
        batch_size=config["train"]["batch_size"],
        lr=config["train"]["learning_rate"],
        wd=config["train"]["weight_decay"],
        head=config["train"]["head"],
        hidden=config["train"]["hidden_features"],
        alignn_layers=config["train"]["alignn_layers"],
        gcn_layers=config["train"]["gcn_layers"],
        patience=config["train"]["early_stopping_patience"] or 0,
        workers=config["train"]["num_workers"],
        device=config["train"]["device"],
        eval_batch_size=config["train"]["eval_batch_size"],
        test_each_epoch="--test-each-epoch" if config["train"]["test_each_epoch"] else "--no-test-each-epoch",
        compile="--compile" if config["train"]["compile"] else "--no-compile",
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
        " --graphs '{params.graphs}' --embeddings '{params.embeddings}'"
        " --target {wildcards.target} --variant {wildcards.variant} --seed {wildcards.seed}"
        " --epochs {params.epochs} --batch-size {params.batch_size} --learning-rate {params.lr}"
        " --weight-decay {params.wd} --head {params.head} --hidden-features {params.hidden}"
        " --alignn-layers {params.alignn_layers} --gcn-layers {params.gcn_layers}"
        " --early-stopping-patience {params.patience} --num-workers {params.workers}"
        " --device {params.device} --threads {threads}"
        " --eval-batch-size {params.eval_batch_size} {params.test_each_epoch} {params.compile}"
        " --out-dir results/train/{wildcards.source}/{wildcards.target}/{wildcards.variant}/{wildcards.regime}/seed{wildcards.seed}"
        " 2> {log}"
