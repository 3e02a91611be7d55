# Stage `comparisons`: every pair of variants the report's tables conclude from, judged by a paired interval
# over seeds and test materials (results/comparisons.csv; the report's sentences are written from it).


rule comparisons:
    input:
        runs=report_runs,
    output:
        csv="results/comparisons.csv",
    params:
        specs=lambda w: json.dumps({t: config["tables"][t] for t in config["report"]["tables"]}, sort_keys=True),
        units=lambda w: json.dumps({s: {t: d["unit"] for t, d in src["targets"].items()} for s, src in config["sources"].items()}),
    log:
        "logs/comparisons.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "crys-pipeline comparisons --specs '{params.specs}' --units '{params.units}' --out-csv {output.csv}"
        " {input.runs} 2> {log}"
