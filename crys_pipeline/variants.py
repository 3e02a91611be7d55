"""The model variants: one torch-free table that the Snakefile, the rules, the registry, tables and benches read.

A variant is a graph encoder (or none), a cached text view (or none) and the head that joins them:
- graph + text (CrysMMNet and its Table 5/6 ablations): the fusion head of ``model.head`` (code | paper);
- text only (CrysTextNet): the projection of the text vector and a small MLP;
- graph only (the baselines): the original model's own output layer, so they are the published architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

GRAPH_ENCODERS = ("alignn", "cgcnn", "megnet", "gatgnn")


@dataclass(frozen=True)
class Variant:
    """What a model variant consumes.

    Attributes:
        graph_encoder: one of ``GRAPH_ENCODERS``, or None for text only.
        text_view: the cached text embedding it reads, one of ``schemas.TEXT_VIEWS`` ("full" | "global" |
            "local"), or None for graph only.
    """

    graph_encoder: str | None
    text_view: str | None


VARIANTS: dict[str, Variant] = {
    "crysmmnet": Variant("alignn", "full"),
    "alignn": Variant("alignn", None),
    "crystextnet": Variant(None, "full"),
    "crysmmnet_global": Variant("alignn", "global"),
    "crysmmnet_local": Variant("alignn", "local"),
    "cgcnn": Variant("cgcnn", None),
    "crysmmnet_cgcnn": Variant("cgcnn", "full"),
    "megnet": Variant("megnet", None),
    "crysmmnet_megnet": Variant("megnet", "full"),
    "gatgnn": Variant("gatgnn", None),
    "crysmmnet_gatgnn": Variant("gatgnn", "full"),
}

@dataclass(frozen=True)
class Comparison:
    """A pair of variants the paper draws a conclusion from, and the question it answers.

    Attributes:
        variant: the model under test.
        reference: the model it is compared with (same source, target, regime and test materials).
        question: what a `lower` verdict (the variant's MAE is lower) says, in words.
    """

    variant: str
    reference: str
    question: str


#: Every comparison a table can support: a table compares each pair whose two variants it runs.
COMPARISONS: tuple[Comparison, ...] = (
    Comparison("crysmmnet", "alignn", "text added to ALIGNN"),
    Comparison("crysmmnet_cgcnn", "cgcnn", "text added to CGCNN"),
    Comparison("crysmmnet_megnet", "megnet", "text added to MEGNet"),
    Comparison("crysmmnet_gatgnn", "gatgnn", "text added to GATGNN"),
    Comparison("crystextnet", "alignn", "text alone instead of the ALIGNN graph"),
    Comparison("crysmmnet", "crystextnet", "the ALIGNN graph added to text"),
    Comparison("crysmmnet_global", "crysmmnet", "global text instead of the full text"),
    Comparison("crysmmnet_local", "crysmmnet", "local text instead of the full text"),
)


def comparisons_of(variants: list[str]) -> list[Comparison]:
    """The comparisons whose two variants are both in `variants`, in ``COMPARISONS`` order."""
    return [c for c in COMPARISONS if c.variant in variants and c.reference in variants]


def variant(name: str) -> Variant:
    """The variant called `name`, or an error listing the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; known: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def wildcard_pattern() -> str:
    """The `{variant}` wildcard constraint: exactly the known names."""
    return "|".join(VARIANTS)
