# Stage `fusion`: the fusion variants beyond [CLS] against the constant, CrysMMNet and ALIGNN (results/fusion.csv)
# and the report's fusion section generated from it (results/fusion.md); `cross_attention` draws what the atoms
# of a cross-attention run attend to (docs/method.md §11).


rule fusion:
    input:
        runs=fusion_runs,
        cross=fusion_attention,
        cls=fusion_cls_attention,
    output:
        csv="results/fusion.csv",
        md="results/fusion.md",
    params:
        spec=lambda w: json.dumps(config["tables"]["fusion"], sort_keys=True),
        units=lambda w: json.dumps({t: d["unit"] for t, d in config["sources"][config["tables"]["fusion"]["source"]]["targets"].items()}),
        cls=lambda w, input: " ".join(f"--cls-attention {p}" for p in input.cls),
        layer=config["attention"]["layer"],
    log:
        "logs/fusion.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "crys-pipeline fusion --spec '{params.spec}' --units '{params.units}' --out-csv {output.csv}"
        " --out-md {output.md} --cross-attention {input.cross} {params.cls} --cls-layer {params.layer}"
        " {input.runs} 2> {log}"


rule cross_attention:
    input:
        model="results/train/{source}/{target}/{variant}/{regime}/seed{seed}/model.json",
        structures="results/structures/{source}.parquet",
        split="results/splits/{source}/{target}/{regime}.json",
        graphs="results/graphs/{source}",
        embeddings="results/embeddings/{source}.h5",
        tokens="results/tokens/{source}.h5",
    output:
        csv="results/fusion/attention/{source}/{target}/{variant}/{regime}/seed{seed}/summary.csv",
        png="results/fusion/attention/{source}/{target}/{variant}/{regime}/seed{seed}/summary.png",
        figures=directory("results/fusion/attention/{source}/{target}/{variant}/{regime}/seed{seed}/materials"),
    wildcard_constraints:
        variant="|".join(name for name, v in VARIANTS.items() if v.tokens == "all"),
    params:
        settings=settings_args("attention", names=("cross_materials",)),
        out_dir=lambda w, output: str(Path(output.csv).parent),
    threads: 1
    log:
        "logs/fusion/attention/{source}/{target}/{variant}/{regime}/seed{seed}.log",
    conda:
        "../../envs/torch.yaml"
    shell:
        "crys-pipeline cross-attention --run-dir $(dirname {input.model}) --structures {input.structures}"
        " --split {input.split} --graphs {input.graphs} --embeddings {input.embeddings} --tokens {input.tokens}"
        " {params.settings} --out-dir {params.out_dir} 2> {log}"
