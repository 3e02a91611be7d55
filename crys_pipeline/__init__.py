"""crys_pipeline: CrysMMNet multimodal crystal property prediction as a cached Snakemake pipeline."""

__version__ = "0.1.0"
