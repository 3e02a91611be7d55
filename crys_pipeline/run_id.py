"""The identity of one training run, (source, target, variant, regime, seed), and its folder: written here only.

Torch-free and free of the package's other modules: the rules (workflow/rules/train.smk, common.smk), the
artifact layouts (`schemas`), training's outputs, tables, comparisons, the report, predict and the
leaderboard export all name a run through ``RunId``. A run's folder is ``RunId.PATTERN``,
`results/train/{source}/{target}/{variant}/{regime}/seed{seed}`; its log and benchmark files mirror the part
below `results/train/` (``RunId.KEY``). Every run file (summary.json, model.json, the predictions' metadata)
records the five fields under their names, so ``RunId.of`` reads the identity back from any of them (and from
a rule's wildcards).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

#: (source, target, variant, regime): the model a run is one seed of (``RunId.model``).
ModelKey = tuple[str, str, str, str]


@dataclass(frozen=True)
class RunId:
    """Which training run: the model (source, target, variant, regime) and its seed.

    Attributes:
        source: a config `sources` name (jarvis_dft_3d_2021, mp_2018, a folder source).
        target: a target of that source.
        variant: a model variant of ``crys_pipeline.variants.VARIANTS``.
        regime: `full` or `low20`.
        seed: the model seed.
    """

    source: str
    target: str
    variant: str
    regime: str
    seed: int

    #: The run's folder below `results/train/`, with Snakemake wildcards (``str.format`` fields).
    KEY: ClassVar[str] = "{source}/{target}/{variant}/{regime}/seed{seed}"
    #: The folder of every run, below the results folder.
    TRAIN_DIR: ClassVar[str] = "train"
    #: The run folder as a Snakemake output pattern (relative to the working directory).
    PATTERN: ClassVar[str] = f"results/{TRAIN_DIR}/{KEY}"

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> RunId:
        """The run a summary.json, model.json, predictions' metadata or a rule's wildcards name."""
        return cls(*(str(record[name]) for name in RUN_ID_FIELDS[:-1]), int(record["seed"]))

    @classmethod
    def from_folder(cls, folder: str | Path) -> RunId | None:
        """The run a folder's path spells (its last five parts), or None when the path is no run folder."""
        parts = Path(folder).parts[-5:]
        if len(parts) < 5 or not re.fullmatch(r"seed\d+", parts[4]):
            return None
        return cls(*parts[:4], int(parts[4].removeprefix("seed")))

    @property
    def key(self) -> str:
        """The run's folder below `results/train/`: `{source}/{target}/{variant}/{regime}/seed{seed}`."""
        return self.KEY.format(**asdict(self))

    def folder(self, results: str | Path = "results") -> Path:
        """The run folder under the results folder `results` (`results/train/{key}`)."""
        return Path(results) / self.TRAIN_DIR / self.key

    @property
    def model(self) -> ModelKey:
        """(source, target, variant, regime): the model this run is one seed of."""
        return self.source, self.target, self.variant, self.regime

    @property
    def label(self) -> str:
        """`{variant}/{regime}/seed{seed}`: the run among the runs of one (source, target)."""
        return f"{self.variant}/{self.regime}/seed{self.seed}"


#: The identity's field names, in order.
RUN_ID_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RunId))
