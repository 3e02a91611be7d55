# Stage `tables`: paper tables (CSV + Markdown) assembled from run summaries, and the report.


rule tables:
    input:
        runs=table_runs,
    output:
        csv="results/{table}.csv",
        md="results/{table}.md",
    log:
        "logs/tables/{table}.log",
    conda:
        "../../envs/torch.yaml"
    params:
        spec=table_spec,
        units=table_units,
    shell:
        "crys-pipeline tables --table {wildcards.table} --spec '{params.spec}' --units '{params.units}'"
        " --out-csv {output.csv} --out-md {output.md} {input.runs} 2> {log}"


rule report:
    input:
        tables=expand("results/{table}.csv", table=[t for t in config["report"]["tables"] if t != "fusion"]),
        fusion=report_fusion,
        comparisons="results/comparisons.csv",
        runs=report_runs,
    output:
        md="results/report.md",
        figs=directory("results/report"),
    log:
        "logs/report.log",
    conda:
        "../../envs/torch.yaml"
    params:
        tables=lambda w, input: " ".join(f"--table {path}" for path in input.tables),
        fusion=lambda w, input: " ".join(f"--fusion {path}" for path in input.fusion),
    shell:
        "crys-pipeline report {params.tables} {params.fusion} --comparisons {input.comparisons} --out-md {output.md}"
        " --fig-dir {output.figs} {input.runs} 2> {log}"
