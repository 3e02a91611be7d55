# Stage `ingest`: snapshot -> one validated row per material, rejected records with a reason.


rule ingest:
    input:
        manifest="resources/snapshots/{source}.json",
    output:
        structures="results/structures/{source}.parquet",
        rejected="results/structures/{source}.rejected.parquet",
    log:
        "logs/ingest/{source}.log",
    benchmark:
        "benchmarks/ingest/{source}.tsv"
    conda:
        "../../envs/describe.yaml"
    params:
        targets=targets_json,
        subset=lambda w: json.dumps(source_cfg(w).get("subset")),
        stratify=stratify_target,
    shell:
        "crys-pipeline ingest --manifest {input.manifest} --targets '{params.targets}'"
        " --subset '{params.subset}' --stratify-target {params.stratify}"
        " --out {output.structures} --rejected {output.rejected} 2> {log}"
