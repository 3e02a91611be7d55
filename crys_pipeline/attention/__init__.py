"""[CLS] attention of the frozen text encoder over Robocrystallographer descriptions (paper section 4.4).

The paper shows, for one material, that the [CLS] token of MatSciBERT's layer 5 attends to the
global tokens of the description (formula, mineral, crystal system, space group, dimensionality)
and to bond types and lengths. This package makes that a measured statement:

* `tagging`: the token categories and the rules that assign them to the characters of a text;
* `encoder`: the encoder with attention outputs ([CLS] attention rows, word pieces merged into words);
* `drawing`: matplotlib plots of one text word by word and of the per-category summary;
* `summary`: per-material shares of attention per category and layer, aggregated with polars;
* `stage`: the entry points `plot_material` and `summarize`, which write the artifacts.
"""

from crys_pipeline.attention.stage import plot_material, summarize

__all__ = ["plot_material", "summarize"]
