"""Argument helpers shared by the subcommand modules."""

from __future__ import annotations

from pathlib import Path


def optional_path(value: str) -> Path | None:
    """A path argument where '' means "not used" (rules pass '' for an input a variant does not read)."""
    return Path(value) if value else None
