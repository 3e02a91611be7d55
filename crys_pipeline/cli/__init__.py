"""`crys-pipeline` command line: one subcommand per pipeline stage.

Each subcommand is a short adapter: it parses arguments, imports its stage module lazily (so
`--help` stays instant and heavy libraries load only where needed) and calls one typed function
that knows nothing of Snakemake. Settings flags are derived from the dataclasses of
`crys_pipeline.settings`. Logging goes to stderr; Snakemake rules redirect it to `logs/`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from crys_pipeline.cli import attention, data, fusion, runs


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="crys-pipeline",
        description="CrysMMNet pipeline stages. Each subcommand reads and writes one artifact kind; "
        "Snakemake (see the Snakefile) chains them.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="STAGE")
    for add in (*data.SUBCOMMANDS, *runs.SUBCOMMANDS, *attention.SUBCOMMANDS, *fusion.SUBCOMMANDS):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status (1 on a handled error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from crys_pipeline.lifecycle import watch_workflow

    watch_workflow()  # a killed snakemake takes this job with it (no orphan beside the rerun's copy)
    try:
        status = args.handler(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        logging.getLogger("crys_pipeline").error("%s", exc)
        return 1
    except OSError as exc:  # a full disk names the file it was writing; any other OSError keeps its traceback
        from crys_pipeline.io.core import disk_full_message

        message = disk_full_message(exc)
        if message is None:
            raise
        logging.getLogger("crys_pipeline").error("%s", message)
        return 1
    return int(status or 0)
