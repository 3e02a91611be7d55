# Stage `comparisons`: every pair of variants the report's tables conclude from, judged by a paired interval
# over seeds and test materials (results/comparisons.csv; the report's sentences are written from it).


rule comparisons:
    input:
        runs=report_runs,
    output:
        csv="results/comparisons.csv",
    log:
        "logs/comparisons.log",
    conda:
        "../../envs/torch.yaml"
    params:
        specs=report_specs,
        units=source_units,
    shell:
        "crys-pipeline comparisons --specs '{params.specs}' --units '{params.units}' --out-csv {output.csv}"
        " {input.runs} 2> {log}"
