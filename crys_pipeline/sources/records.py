"""The canonical record every provider reader yields: one snapshot entry, before `ingest` validates it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: Official split labels, as the providers write them.
SPLIT_LABELS = ("train", "val", "test")


@dataclass
class RawRecord:
    """A snapshot record mapped to canonical names, before validation."""

    material_id: str
    lattice: Any
    species: Any
    frac_coords: Any
    values: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, str | None] = field(default_factory=dict)
    problem: str | None = None  # why the snapshot entry could not be read (its id is then `file:line`)


def unreadable(where: str, problem: str) -> RawRecord:
    """The placeholder of a snapshot entry that cannot be read (bad JSON, no id): a rejected row."""
    return RawRecord(where, None, None, None, problem=f"{where}: {problem}")
