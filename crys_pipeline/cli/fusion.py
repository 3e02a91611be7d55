"""Subcommands of the fusion work beyond [CLS] (docs/method.md §11): tokens, fusion, cross-attention.

Each is a short adapter: it parses arguments, imports its stage module lazily and calls one typed function.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from crys_pipeline import settings
from crys_pipeline.cli.common import optional_path
from crys_pipeline.run_id import RunId


# --- tokens ---------------------------------------------------------------------------------------
def _add_tokens(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokens",
        help="frozen-encoder states of every real token of each full text -> results/tokens/{source}.h5",
        description="HDF5 (kind `tokens`): per material its normalised text, global-section length, token counts "
        "and truncated flag; per kept token its float16 last-layer state, id, character span, word and "
        "attention-stage category. No padding is stored. The encoder flags are the embed stage's; --keep tagged "
        "stores only the tokens that name something (docs/method.md §11.1).",
    )
    p.add_argument("--sections", type=Path, required=True, help="results/text/{source}/sections.parquet")
    p.add_argument("--structures", type=optional_path, default=None,
                   help="results/structures/{source}.parquet: the sections must have been made from it")
    settings.add_arguments(p, settings.EmbedSettings, names=settings.TOKEN_ENCODER_FIELDS)
    settings.add_arguments(p, settings.TokenSettings)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_run_tokens)


def _run_tokens(a: argparse.Namespace) -> None:
    from crys_pipeline import tokens

    tokens.token_sections(a.sections, out=a.out, settings=settings.from_arguments(settings.EmbedSettings, a),
                          tokens=settings.from_arguments(settings.TokenSettings, a), threads=a.threads,
                          structures=a.structures)


# --- fusion ---------------------------------------------------------------------------------------
def _add_fusion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "fusion",
        help="results/fusion.csv + fusion.md: the fusion variants against the constant, CrysMMNet and ALIGNN",
        description="One row per (property, variant) against the constant baseline and per (property, pair of "
        "variants.COMPARISONS the table runs): both MAEs, the mean paired difference, its 95 % interval over seeds "
        "and test materials and the verdict. The Markdown is the report's fusion section, generated from the CSV "
        "(with the cross-attention shares per token category when given).",
    )
    p.add_argument("--spec", type=json.loads, required=True, help="JSON {source, targets, variants, regime}")
    p.add_argument("--units", type=json.loads, required=True, help="JSON {target: unit} of the source")
    p.add_argument("--cross-attention", type=Path, nargs="*", default=[],
                   help="cross-attention summary CSVs (crys-pipeline cross-attention), one per property")
    p.add_argument("--cls-attention", type=optional_path, default=None,
                   help="the [CLS] attention summary CSV of the attention stage (results/attention/{source})")
    p.add_argument("--cls-layer", type=int, default=settings.AttentionSettings().layer,
                   help="its layer shown beside the cross-attention (attention.layer)")
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("runs", type=Path, nargs="+", help="summary.json of every run (every seed) of the table")
    p.set_defaults(handler=_run_fusion)


def _run_fusion(a: argparse.Namespace) -> None:
    from crys_pipeline import fusion

    fusion.build_fusion(a.spec, units=a.units, runs=a.runs, out_csv=a.out_csv, out_md=a.out_md,
                        cross_attention=a.cross_attention, cls_attention=a.cls_attention, cls_layer=a.cls_layer)


# --- cross-attention ------------------------------------------------------------------------------
def _add_cross_attention(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cross-attention",
        help="which tokens the atoms of a crysmmnet_xattn run attend to: per-material figures and category shares",
        description="Runs the val-selected model of RUN_DIR over its test materials. Writes OUT_DIR/summary.csv "
        "(share of the atoms' attention per token category, mean over materials, next to the category's share of "
        "tokens), summary.png, and for the first materials by id {id}.png (the text, each word coloured by the "
        "attention of the crystal's atoms, mean over atoms and heads) and {id}_atoms.png (per atom and category).",
    )
    p.add_argument("--run-dir", type=Path, required=True,
                   help=f"the run folder of a crysmmnet_xattn run ({RunId.PATTERN})")
    p.add_argument("--structures", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--graphs", type=Path, required=True)
    p.add_argument("--embeddings", type=Path, required=True)
    p.add_argument("--tokens", type=Path, required=True)
    settings.add_arguments(p, settings.AttentionSettings, names=("cross_materials",))
    p.add_argument("--out-dir", type=Path, required=True)
    p.set_defaults(handler=_run_cross_attention)


def _run_cross_attention(a: argparse.Namespace) -> None:
    from crys_pipeline.attention import cross

    analysis = settings.from_arguments(settings.AttentionSettings, a)
    cross.analyse_run(a.run_dir, structures=a.structures, split=a.split, graphs=a.graphs, embeddings=a.embeddings,
                      tokens=a.tokens, materials=analysis.cross_materials, out_dir=a.out_dir)


#: This module's subcommands, in `crys-pipeline --help` order.
SUBCOMMANDS = [_add_tokens, _add_fusion, _add_cross_attention]
