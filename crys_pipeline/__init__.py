"""crys_pipeline: CrysMMNet multimodal crystal property prediction as a cached Snakemake pipeline."""

#: The package version, defined only here (pyproject.toml reads it; no installation metadata needed).
__version__ = "0.1.0"
