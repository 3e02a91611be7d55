"""Fixed CGCNN atom descriptors as a lookup table indexed by atomic number (docs/method.md §2.5).

The 92-dim binary descriptor of CGCNN (9 one-hot groups: group, period, electronegativity,
covalent radius, valence electrons, first ionisation energy, electron affinity, block, atomic
volume) is what ALIGNN and CrysMMNet call ``atom_features="cgcnn"``. It ships with this package in
``crys_pipeline/data/cgcnn_atom_init.json``, extracted once, unchanged, from jarvis-tools'
``jarvis/core/atom_init.json`` (the file records the jarvis-tools version and the source sha256).

The table has 104 rows (jarvis ``Elements.json`` stops at Z = 103): row 0 is all zeros and
Z = 101..103 reuse the Z = 100 vector, as jarvis' ``get_node_attributes`` does for elements
missing from ``atom_init.json``. Graph shards store Z only; models map it through this table.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

#: Rows of the table: Z = 0 (padding) .. 103.
N_ROWS = 104
#: Largest atomic number any model can featurise (Lr): ingest and predict refuse heavier elements.
MAX_Z = N_ROWS - 1
#: Width of the CGCNN descriptor.
N_FEATURES = 92
#: Largest atomic number with its own descriptor; heavier elements fall back to it.
MAX_DESCRIBED_Z = 100
TABLE_FILE = "cgcnn_atom_init.json"


def cgcnn_provenance() -> dict[str, str]:
    """Where the shipped descriptor file came from (package version, path, sha256 of the source)."""
    return dict(_load_json()["provenance"])


@functools.lru_cache(maxsize=1)
def _load_json() -> dict:
    text = resources.files("crys_pipeline").joinpath("data", TABLE_FILE).read_text()
    return json.loads(text)


@functools.lru_cache(maxsize=1)
def _table() -> np.ndarray:
    features = _load_json()["features"]
    table = np.zeros((N_ROWS, N_FEATURES), dtype=np.float32)
    for key, vector in features.items():
        if len(vector) != N_FEATURES:
            raise ValueError(f"{TABLE_FILE}: Z={key} has {len(vector)} features, expected {N_FEATURES}")
        table[int(key)] = vector
    missing = [z for z in range(1, MAX_DESCRIBED_Z + 1) if not table[z].any()]
    if missing:
        raise ValueError(f"{TABLE_FILE}: no descriptor for Z={missing}")
    table[MAX_DESCRIBED_Z + 1:] = table[MAX_DESCRIBED_Z]
    table.setflags(write=False)
    return table


def cgcnn_feature_table() -> np.ndarray:
    """The CGCNN descriptor table.

    Returns:
        float32 [104, 92]: row Z holds the descriptor of element Z; row 0 is zeros; rows 101..103
        equal row 100. A fresh writable copy (the cached master stays read-only).
    """
    return _table().copy()
