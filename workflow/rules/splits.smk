# Stage `splits`: per (source, target) the full and low20 train/val/test id lists with a hash.


rule splits:
    input:
        structures="results/structures/{source}.parquet",
    output:
        full="results/splits/{source}/{target}/full.json",
        low20="results/splits/{source}/{target}/low20.json",
    params:
        method=split_method,
        seed=config["splits"]["seed"],
        train=config["splits"]["train_ratio"],
        val=config["splits"]["val_ratio"],
        test=config["splits"]["test_ratio"],
        low20=config["splits"]["low20_train_ratio"],
    log:
        "logs/splits/{source}/{target}.log",
    conda:
        "../../envs/describe.yaml"
    shell:
        "crys-pipeline splits --structures {input.structures} --target {wildcards.target}"
        " --method {params.method} --seed {params.seed} --train-ratio {params.train}"
        " --val-ratio {params.val} --test-ratio {params.test} --low20-train-ratio {params.low20}"
        " --out-full {output.full} --out-low20 {output.low20} 2> {log}"
