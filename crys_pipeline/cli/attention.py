"""Subcommands of the [CLS] attention analysis: attention (one material) and attention-summary.

Encoder and analysis flags not given default to the `embed` / `attention` blocks of --config, then to the
settings dataclasses.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from crys_pipeline import settings


# --- attention ------------------------------------------------------------------------------------
def _config_block(path: Path, key: str) -> dict:
    """One block of a config file, or {} when the file does not exist (then the built-in defaults apply)."""
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get(key) or {} if path.is_file() else {}


def _add_encoder_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=Path("config.yaml"),
                   help="config file whose `embed` and `attention` blocks give the defaults of the flags not given "
                   "(default config.yaml; built-in defaults without it)")
    settings.add_arguments(p, settings.EmbedSettings, names=settings.ENCODER_FIELDS)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")


def _encoder_and_analysis(a: argparse.Namespace) -> tuple[settings.EmbedSettings, settings.AttentionSettings]:
    """The encoder and analysis settings: flags given, else the --config file's blocks, else the defaults."""
    from crys_pipeline.devices import set_threads

    set_threads(a.threads)
    return (settings.from_arguments(settings.EmbedSettings, a, _config_block(a.config, "embed")),
            settings.from_arguments(settings.AttentionSettings, a, _config_block(a.config, "attention")))


def _add_attention(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention",
        help="plot the [CLS] attention of one layer over one material's description",
        description="Writes OUT_DIR/{source}/{id}_L{layer}.png (the text word by word, word pieces merged, "
        "coloured by [CLS] attention averaged over heads, encoder named in the title) and "
        "{id}_L{layer}.parquet (kind `attention`: token, word, category, head, weight). Encoder options "
        "default to the `embed` block of --config, --layer/--text-view to its `attention` block.",
    )
    p.add_argument("--source", required=True, help="source name (config key)")
    p.add_argument("--id", dest="material_id", required=True, help="material id")
    settings.add_arguments(p, settings.AttentionSettings, names=("layer", "text_view"))
    p.add_argument("--sections", type=Path, default=None,
                   help="sections table (default: results/text/{source}/sections.parquet)")
    p.add_argument("--out-dir", type=Path, default=Path("results/attention"))
    p.add_argument("--out-png", type=Path, default=None, help="overrides OUT_DIR/{source}/{id}_L{layer}.png")
    p.add_argument("--out-table", type=Path, default=None, help="overrides OUT_DIR/{source}/{id}_L{layer}.parquet")
    p.add_argument("--wrap", type=int, default=110, help="characters per plotted line")
    _add_encoder_options(p)
    p.set_defaults(handler=_run_attention)


def _run_attention(a: argparse.Namespace) -> None:
    from crys_pipeline import attention

    encoder, analysis = _encoder_and_analysis(a)
    stem = a.out_dir / a.source / f"{a.material_id}_L{analysis.layer}"
    attention.plot_material(a.sections or Path(f"results/text/{a.source}/sections.parquet"),
                            material_id=a.material_id, layer=analysis.layer, view=analysis.text_view,
                            settings=encoder, out_png=a.out_png or stem.with_suffix(".png"),
                            out_parquet=a.out_table or stem.with_suffix(".parquet"), wrap=a.wrap)


def _add_attention_summary(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "attention-summary",
        help="share of [CLS] attention per token category and layer over a sample of materials",
        description="Writes a CSV (per layer and category: attention share, share of tokens, enrichment), "
        "its heatmap PNG and a per-material Parquet (kind `attention_shares`; failed rows with the reason).",
    )
    p.add_argument("--sections", type=Path, required=True)
    settings.add_arguments(p, settings.AttentionSettings, names=("text_view", "sample", "seed"))
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-png", type=Path, required=True)
    p.add_argument("--out-shares", type=Path, required=True)
    _add_encoder_options(p)
    p.set_defaults(handler=_run_attention_summary)


def _run_attention_summary(a: argparse.Namespace) -> None:
    from crys_pipeline import attention

    encoder, analysis = _encoder_and_analysis(a)
    attention.summarize(a.sections, view=analysis.text_view, sample=analysis.sample, seed=analysis.seed,
                        settings=encoder, out_csv=a.out_csv, out_png=a.out_png, out_shares=a.out_shares)


#: This module's subcommands, in `crys-pipeline --help` order.
SUBCOMMANDS = [_add_attention, _add_attention_summary]
