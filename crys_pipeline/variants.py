"""The model variants: one torch-free table that the Snakefile, the rules, the registry, tables and benches read.

A variant is a graph encoder (or none), a cached text view (or none) and the head that joins them:
- graph + text (CrysMMNet and its Table 5/6 ablations): the fusion head of ``model.head`` (code | paper);
- text only (CrysTextNet): the projection of the text vector and a small MLP;
- graph only (the baselines): the original model's own output layer, so they are the published architectures.

Beyond CrysMMNet's late concatenation, ``fusion`` says how else the text reaches the ALIGNN graph
(docs/method.md §11): `film` (the [CLS] vector scales and shifts the node and edge features before every layer)
or `cross_attention` (the atoms attend to the text's token states, cached by the `tokens` stage; ``tokens`` says
which of them the model reads).
"""

from __future__ import annotations

from dataclasses import dataclass

GRAPH_ENCODERS = ("alignn", "cgcnn", "megnet", "gatgnn")
#: How the text reaches the graph besides the late concatenation (docs/method.md §11).
FUSIONS = ("concat", "film", "cross_attention")
#: Which cached token states a cross-attention variant reads: every real token, or those the attention stage
#: tags as naming something (`crys_pipeline.tokens.TAGGED`; the reduction of docs/method.md §11.1).
TOKEN_SETS = ("all", "tagged")


@dataclass(frozen=True)
class Variant:
    """What a model variant consumes.

    Attributes:
        graph_encoder: one of ``GRAPH_ENCODERS``, or None for text only.
        text_view: the cached text embedding it reads, one of ``schemas.TEXT_VIEWS`` ("full" | "global" |
            "local"), or None for graph only.
        fusion: one of ``FUSIONS``; `film` and `cross_attention` need the ALIGNN encoder and a text view.
        tokens: one of ``TOKEN_SETS`` for `cross_attention` (the token states it reads), else None.
    """

    graph_encoder: str | None
    text_view: str | None
    fusion: str = "concat"
    tokens: str | None = None

    def __post_init__(self) -> None:
        """Raise ValueError for a combination no model implements."""
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion {self.fusion!r} is not one of {FUSIONS}")
        if self.fusion != "concat" and (self.graph_encoder != "alignn" or self.text_view is None):
            raise ValueError(f"fusion {self.fusion!r} needs the ALIGNN encoder and a text view")
        if (self.tokens is not None) != (self.fusion == "cross_attention") or self.tokens not in (None, *TOKEN_SETS):
            raise ValueError(f"tokens {self.tokens!r}: one of {TOKEN_SETS} for cross_attention, else None")


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
    "crysmmnet_film": Variant("alignn", "full", fusion="film"),
    "crysmmnet_xattn": Variant("alignn", "full", fusion="cross_attention", tokens="all"),
    "crysmmnet_xattn_tagged": Variant("alignn", "full", fusion="cross_attention", tokens="tagged"),
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
    Comparison("crysmmnet_film", "crysmmnet", "the [CLS] vector steering every graph layer, added to CrysMMNet"),
    Comparison("crysmmnet_film", "alignn", "text steering every graph layer and joining the head, added to ALIGNN"),
    Comparison("crysmmnet_xattn", "crysmmnet", "atoms attending to the text's tokens, added to CrysMMNet"),
    Comparison("crysmmnet_xattn", "alignn", "text as tokens the atoms attend to and as [CLS], added to ALIGNN"),
    Comparison("crysmmnet_xattn_tagged", "crysmmnet_xattn", "only the tagged tokens (the reduction) instead of all"),
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
