# Stage `download`: fetch (or locate) a source snapshot and record its sha256; never edits it.
# A local snapshot file is an input, so editing it reruns download, ingest and everything downstream.


rule download:
    input:
        snapshot=snapshot_files,
    output:
        manifest="resources/snapshots/{source}.json",
    params:
        provider=lambda w: source_cfg(w)["provider"],
        jarvis_key=lambda w: source_cfg(w)["jarvis_key"],
        snapshot_dir=lambda w: source_cfg(w).get("snapshot_dir") or "",
    log:
        "logs/download/{source}.log",
    benchmark:
        "benchmarks/download/{source}.tsv"
    conda:
        "../../envs/describe.yaml"
    shell:
        "crys-pipeline download --source {wildcards.source} --provider {params.provider}"
        " --jarvis-key {params.jarvis_key} --snapshot-dir '{params.snapshot_dir}'"
        " --download-dir resources/downloads --out {output.manifest} 2> {log}"
