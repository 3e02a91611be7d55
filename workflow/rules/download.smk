# Stage `download`: fetch (or locate) a source snapshot and record its sha256; never edits it.
# A local snapshot file (for a folder source: its id_prop table and every listed file) is an input, so editing it reruns download, ingest and everything downstream.
# Their checksum is a param, so an edit that keeps the modification time (Snakemake's input check) reruns them too.


rule download:
    input:
        snapshot=snapshot_files,
    output:
        manifest="resources/snapshots/{source}.json",
    log:
        "logs/download/{source}.log",
    benchmark:
        "benchmarks/download/{source}.tsv"
    conda:
        "../../envs/describe.yaml"
    params:
        provider=lambda w: source_cfg(w)["provider"],
        where=download_args,
        checksum=snapshot_checksum,
    shell:
        "crys-pipeline download --source {wildcards.source} --provider {params.provider}"
        " {params.where}"
        " --download-dir resources/downloads --out {output.manifest} 2> {log}"
