"""Token categories of a Robocrystallographer description, and the texts they are read from.

Token categories are assigned per character of the (normalised) text and a token takes the
category of its first character. The rules follow how robocrys writes a description:

* The global section (robocrys' `mineral` + `component_makeup` parts, optionally a header) is a
  known prefix of the full text (the `global` column of the sections table). Inside it the
  mineral sentence has a fixed template, "<formula> [is <mineral> structured and] crystallizes in
  the <crystal system> <space group> space group.", whose slots give `formula`, `mineral`,
  `crystal_system` and `space_group`; the component-makeup sentence ("The structure is
  <n>-dimensional and consists of ...", which also names the components, their formulas and
  orientations) is `dimensionality`; the remaining template words are `global_other`.
* In the local section (robocrys' `components` part): a number followed by Å (or A after the
  MatSciBERT normaliser), or a range of two such numbers, is a `bond_length`; a coordination
  geometry name (matminer's CrystalNN "ops" names used by robocrys, "<n>-coordinate"), a
  polyhedron name or a polyhedral-connectivity / distortion / tilt word is `geometry`; an element
  symbol with its site label, count or charge ("Na(1)", "NaO5", "O2-") is `site`; any other
  number (digits or a cardinal word such as "six") is `number`; other words are `local_other`.
* Punctuation characters outside those slots are `punctuation`; [CLS] and [SEP] are `special`.

The texts come from the sections table (`read_sections`, `section_text`), each with the length of
its global section in normalised characters.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crys_pipeline.schemas import TEXT_VIEWS

if TYPE_CHECKING:
    from crys_pipeline.attention.encoder import EncodedAttention

log = logging.getLogger(__name__)


GLOBAL_CATEGORIES = ("formula", "mineral", "crystal_system", "space_group", "dimensionality", "global_other")
LOCAL_CATEGORIES = ("site", "geometry", "bond_length", "number", "local_other")
OTHER_CATEGORIES = ("punctuation", "special")
#: Every token category, in display order.
CATEGORIES: tuple[str, ...] = GLOBAL_CATEGORIES + LOCAL_CATEGORIES + OTHER_CATEGORIES
#: Section ("global", "local", "other") of each category.
SECTION: dict[str, str] = {
    **{c: "global" for c in GLOBAL_CATEGORIES},
    **{c: "local" for c in LOCAL_CATEGORIES},
    **{c: "other" for c in OTHER_CATEGORIES},
}

# fmt: off
#: Element symbols Z = 1..118 (checked against pymatgen's periodic table in the tests).
ELEMENTS = frozenset((
    "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P", "S", "Cl", "Ar", "K",
    "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr",
    "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",
    "Xe", "Cs", "Ba", "La", "Ce", "Pr", "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb",
    "Lu", "Hf", "Ta", "W", "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr",
    "Ra", "Ac", "Th", "Pa", "U", "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og",
))

#: Coordination geometry names robocrys 0.2.13 can write: matminer's CrystalNNFingerprint "ops"
#: preset labels without the "CN_n" suffix ("sgl_bd" is written "single-bond"), plus q2/q4/q6.
GEOMETRY_NAMES = (
    "single-bond", "L-shaped", "water-like", "bent 120 degrees", "bent 150 degrees", "linear",
    "trigonal planar", "trigonal non-coplanar", "T-shaped", "square co-planar", "tetrahedral",
    "rectangular see-saw-like", "see-saw-like", "trigonal pyramidal", "pentagonal planar",
    "square pyramidal", "trigonal bipyramidal", "hexagonal planar", "octahedral", "pentagonal pyramidal",
    "hexagonal pyramidal", "pentagonal bipyramidal", "body-centered cubic", "hexagonal bipyramidal",
    "cuboctahedral", "q2", "q4", "q6",
)
#: Polyhedron names (robocrys.util.geometry_to_polyhedra / polyhedra_plurals), connectivity,
#: distortion and tilt words of the robocrys describer.
GEOMETRY_WORDS = (
    "octahedra", "tetrahedra", "cuboctahedra", "trigonal pyramids", "trigonal pyramid", "square pyramids",
    "square pyramid", "trigonal bipyramids", "trigonal bipyramid", "pentagonal pyramids",
    "pentagonal pyramid", "hexagonal pyramids", "hexagonal pyramid", "pentagonal bipyramids",
    "pentagonal bipyramid", "hexagonal bipyramids", "hexagonal bipyramid", "corner-sharing", "edge-sharing",
    "face-sharing", "corners", "corner", "edges", "edge", "faces", "face", "sharing", "share", "distorted",
    "geometry", "tilt angles", "tilted", "tilt",
)
#: Cardinal number words (robocrys writes neighbour counts with inflect's number_to_words).
CARDINALS = (
    "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty", "thirty",
    "forty", "fifty", "sixty", "seventy", "eighty", "ninety", "hundred",
)
# fmt: on


def _alternation(phrases: tuple[str, ...] | list[str]) -> str:
    """Regex alternation of literal phrases, longest first so that the longest phrase wins."""
    return "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))


MINERAL_RE = re.compile(
    r"(?P<formula>\S+) (?:is (?P<mineral>.+?) structured and )?crystallizes in the "
    r"(?P<crystal_system>[a-z]+) (?P<space_group>\S+) space group"
)
MAKEUP_RE = re.compile(r"The structure (?:is \S+-dimensional and )?consists of .*?\.(?=\s|$)")
DIMENSIONAL_RE = re.compile(r"(?<![A-Za-z])[a-z]+-dimensional")
BOND_LENGTH_RE = re.compile(r"\d+\.\d+(?:\s*[-\u2013]\s*\d+\.\d+)?\s*(?:\u00c5|A)(?![A-Za-z])")
GEOMETRY_RE = re.compile(
    r"(?<![A-Za-z])(?:" + _alternation(GEOMETRY_NAMES + GEOMETRY_WORDS) + r"|\d+-coordinate)(?![A-Za-z])"
)
SITE_RE = re.compile(
    r"(?P<el>[A-Z][a-z]?)(?![a-z])(?P<suffix>\(\d+\)|\d+(?:\.\d+)?[+-]?|[+-]\d+(?:\.\d+)?[+-])?"
)
NUMBER_RE = re.compile(r"\d+(?:\.\d+)?|(?<![A-Za-z])(?:" + _alternation(CARDINALS) + r")(?![a-z])")
#: Sentence-initial "In" followed by an article is the preposition, not indium.
PREPOSITION_IN_RE = re.compile(r"In(?= (?:the|each|a|an) )")


def _paint(labels: np.ndarray, spans: list[tuple[int, int]], category: str, limit: tuple[int, int]) -> None:
    """Set `labels[start:end] = category` for each span, clipped to the [lo, hi) region."""
    lo, hi = limit
    for start, end in spans:
        labels[max(start, lo) : min(end, hi)] = category


def _spans(pattern: re.Pattern, text: str, group: int | str = 0) -> list[tuple[int, int]]:
    return [m.span(group) for m in pattern.finditer(text) if m.group(group) is not None]


def _site_spans(text: str) -> list[tuple[int, int]]:
    """Element symbols with their site label / count / charge, skipping the preposition "In"."""
    skip = {m.start() for m in PREPOSITION_IN_RE.finditer(text)}
    return [m.span() for m in SITE_RE.finditer(text) if m.group("el") in ELEMENTS and m.start() not in skip]


def char_categories(text: str, global_len: int) -> np.ndarray:
    """Category of every character of `text` whose first `global_len` characters are the global section.

    Returns:
        object array [len(text)] of category names (see the module docstring for the rules).
    """
    labels = np.empty(len(text), dtype=object)
    glob, g = text[:global_len], (0, global_len)
    loc, lo = text, (global_len, len(text))
    labels[:global_len], labels[global_len:] = "global_other", "local_other"
    _paint(labels, _spans(MAKEUP_RE, glob), "dimensionality", g)
    _paint(
        labels,
        [(i, i + 1) for i, c in enumerate(text) if unicodedata.category(c)[0] in "PS"],
        "punctuation",
        (0, len(text)),
    )
    _paint(labels, _spans(DIMENSIONAL_RE, glob), "dimensionality", g)
    for slot in ("formula", "mineral", "crystal_system", "space_group"):
        _paint(labels, _spans(MINERAL_RE, glob, slot), slot, g)
    _paint(labels, _spans(NUMBER_RE, loc), "number", lo)
    _paint(labels, _site_spans(loc), "site", lo)
    _paint(labels, _spans(GEOMETRY_RE, loc), "geometry", lo)
    _paint(labels, _spans(BOND_LENGTH_RE, loc), "bond_length", lo)
    return labels


def token_categories(enc: EncodedAttention, global_len: int) -> list[str]:
    """Category of every token: that of its first character, `special` for [CLS]/[SEP]."""
    labels = char_categories(enc.text, global_len)
    return [
        "special" if w < 0 or s >= len(labels) else str(labels[s])
        for w, (s, _) in zip(enc.word_ids, enc.offsets, strict=True)
    ]


def global_prefix_length(normalize: Callable[[str], str], full: str, global_text: str) -> int:
    """Length, in normalised characters, of the global section at the head of the normalised full text.

    The sections stage writes `global` as a prefix of `full`; a mismatch (which would mean the
    sections table is inconsistent) is logged and the common prefix is used.
    """
    norm_full, norm_global = normalize(full), normalize(global_text).rstrip()
    if norm_full.startswith(norm_global):
        return len(norm_global)
    common = 0
    for a, b in zip(norm_full, norm_global, strict=False):
        if a != b:
            break
        common += 1
    log.warning("global text is not a prefix of the full text; using the %d common characters", common)
    return common


@dataclass(frozen=True)
class SectionText:
    """One material's text of the chosen view and where its global section ends."""

    material_id: str
    text: str
    global_len: int


def read_sections(sections: Path) -> list[dict[str, Any]]:
    """Rows (material_id, status, error, full, global, local) of a sections table, sorted by material id."""
    from crys_pipeline import io

    table = io.read_parquet(sections, "sections", columns=["material_id", "status", "error", *TEXT_VIEWS])
    return sorted(table.to_pylist(), key=lambda r: r["material_id"])


def section_text(row: dict[str, Any], view: str, normalize: Callable[[str], str]) -> SectionText:
    """The `view` text of a sections row; `global_len` counts normalised characters."""
    if view not in TEXT_VIEWS:
        raise ValueError(f"unknown text view {view!r}; known: {', '.join(TEXT_VIEWS)}")
    full, glob = row["full"] or "", row["global"] or ""
    glen = {
        "full": global_prefix_length(normalize, full, glob) if glob else 0,
        "global": len(normalize(glob)),
        "local": 0,
    }[view]
    return SectionText(row["material_id"], row[view] or "", glen)
