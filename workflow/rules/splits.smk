# Stage `splits`: per (source, target) the full and low20 train/val/test id lists with a hash.


rule splits:
    input:
        structures="results/structures/{source}.parquet",
    output:
        full="results/splits/{source}/{target}/full.json",
        low20="results/splits/{source}/{target}/low20.json",
    log:
        "logs/splits/{source}/{target}.log",
    conda:
        "../../envs/describe.yaml"
    params:
        method=split_method,
        settings=settings_args("splits"),
    shell:
        "crys-pipeline splits --structures {input.structures} --target {wildcards.target}"
        " --method {params.method} {params.settings}"
        " --out-full {output.full} --out-low20 {output.low20} 2> {log}"
