# Stage `fusion`: the fusion variants beyond [CLS] against the constant, CrysMMNet and ALIGNN (results/fusion.csv)
# and the report's fusion section generated from it (results/fusion.md); `cross_attention` draws what the atoms
# of a cross-attention run attend to (docs/method.md §11), under results/fusion/attention/ mirroring the run folder
# below results/train/ (RunId.KEY, crys_pipeline/run_id.py).


rule fusion:
    input:
        runs=fusion_runs,
        cross=fusion_attention,
        cls=fusion_cls_attention,
    output:
        csv="results/fusion.csv",
        md="results/fusion.md",
    log:
        "logs/fusion.log",
    conda:
        "../../envs/torch.yaml"
    params:
        spec=fusion_spec,
        units=fusion_units,
        cls=lambda w, input: " ".join(f"--cls-attention {p}" for p in input.cls),
        layer=config["attention"]["layer"],
    shell:
        "crys-pipeline fusion --spec '{params.spec}' --units '{params.units}' --out-csv {output.csv}"
        " --out-md {output.md} --cross-attention {input.cross} {params.cls} --cls-layer {params.layer}"
        " {input.runs} 2> {log}"


rule cross_attention:
    input:
        model=f"{RunId.PATTERN}/model.json",
        structures="results/structures/{source}.parquet",
        split="results/splits/{source}/{target}/{regime}.json",
        graphs="results/graphs/{source}",
        embeddings="results/embeddings/{source}.h5",
        tokens="results/tokens/{source}.h5",
    output:
        csv=f"results/fusion/attention/{RunId.KEY}/summary.csv",
        png=f"results/fusion/attention/{RunId.KEY}/summary.png",
        figures=directory(f"results/fusion/attention/{RunId.KEY}/materials"),
    log:
        f"logs/fusion/attention/{RunId.KEY}.log",
    wildcard_constraints:
        variant="|".join(name for name, v in VARIANTS.items() if v.tokens == "all"),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    params:
        run_dir=lambda w: RunId.of(w).folder(),
        settings=settings_args("attention", names=("cross_materials",)),
        out_dir=lambda w, output: str(Path(output.csv).parent),
    shell:
        "crys-pipeline cross-attention --run-dir {params.run_dir} --structures {input.structures}"
        " --split {input.split} --graphs {input.graphs} --embeddings {input.embeddings} --tokens {input.tokens}"
        " {params.settings} --out-dir {params.out_dir} 2> {log}"
