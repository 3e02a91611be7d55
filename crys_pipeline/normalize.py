"""MatSciBERT's text normaliser (docs/method.md §3.3), as CrysMMNet applies it before tokenising.

The reference (`normalize` in MatSciBERT's `normalize_text.py`, copied into CrysMMNet's
`src/models/alignn.py`) splits the text on newlines, applies the `tokenizers` BertNormalizer to each
line with lowercase=False, strip_accents=True, clean_text=True and handle_chinese_chars=True, then maps
every character through `vocab_mappings.txt`; a character without an entry becomes a space. Lines are
joined back with newlines.

The mapping file is shipped as package data (`crys_pipeline/data/vocab_mappings.txt`, provenance in
`crys_pipeline/data/vocab_mappings.md`). It is parsed exactly like the reference does
(`{line[0]: line[2:]}` over the stripped file's lines). The per-character loop of the reference is
replaced by `str.translate` with a table whose missing keys map to a space, which is the same
function (tested against the loop) without a Python-level loop per character.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from importlib import resources

#: Names accepted by `get_normalizer` (config `embed.normalizer`).
NORMALIZERS = ("matscibert", "none")

_MAPPING_FILE = "vocab_mappings.txt"


class _SpaceDefault(dict):
    """Translation table for `str.translate`: code point -> replacement, a space when unmapped.

    A miss is memoised, so each unmapped code point costs one Python call per process.
    """

    def __missing__(self, key: int) -> str:
        self[key] = " "
        return " "


def mapping_text() -> str:
    """The raw text of the shipped `vocab_mappings.txt` (read with universal newlines, as the reference)."""
    return resources.files("crys_pipeline").joinpath("data", _MAPPING_FILE).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def vocab_mappings() -> dict[str, str]:
    """MatSciBERT's character map, parsed like the reference: `{line[0]: line[2:]}` per line."""
    return {line[0]: line[2:] for line in mapping_text().strip().split("\n")}


def mapping_sha256() -> str:
    """sha256 of the shipped mapping file's text (recorded in every embeddings file)."""
    return hashlib.sha256(mapping_text().encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def _table() -> _SpaceDefault:
    return _SpaceDefault({ord(char): repl for char, repl in vocab_mappings().items()})


@functools.lru_cache(maxsize=1)
def _bert_normalizer():
    from tokenizers.normalizers import BertNormalizer

    return BertNormalizer(lowercase=False, strip_accents=True, clean_text=True, handle_chinese_chars=True)


def matscibert_normalize(text: str) -> str:
    """MatSciBERT's `normalize(text)`: BertNormalizer per line, then the character map (unmapped -> space)."""
    norm = _bert_normalizer()
    table = _table()
    return "\n".join(norm.normalize_str(line).translate(table) for line in text.split("\n"))


def identity(text: str) -> str:
    """The `none` normaliser: the raw text."""
    return text


def get_normalizer(name: str) -> Callable[[str], str]:
    """The normaliser function named by config `embed.normalizer` (`matscibert` or `none`)."""
    if name == "matscibert":
        return matscibert_normalize
    if name == "none":
        return identity
    raise ValueError(f"unknown normalizer {name!r}; choose one of {', '.join(NORMALIZERS)}")
