"""The only package that opens Parquet, HDF5, JSON and torch artifacts.

Writers stamp every file with its kind, SCHEMA_VERSION, the package version and the parameters
that produced it, add checksums (Parquet page CRCs, a sha256 per graph shard in manifest.json, a
sha256 per HDF5 dataset, a self-sha256 in every JSON object) and write through one helper,
`write_atomic` (temporary file beside the target, then rename), so a killed job never leaves a
half-written artifact under its final name. Readers validate the layout declared in `schemas.py`,
the checksums and, when asked, that the file was made with the expected parameters: a stale, foreign
or damaged file is one ArtifactError naming the path and the fix, never a silent wrong value.
Modules: `core` (stamps, atomic writes, JSON, text, torch), `parquet`, `graph_shards` (the graph
layout's row codec and shard-folder reader), `hdf5` (the embeddings), `tokens` (the token states).
"""

from crys_pipeline.io.core import (
    CHECKSUM_KEY,
    ArtifactError,
    DiskFullError,
    check_lineage,
    corrupt,
    naming_a_full_disk,
    read_json,
    read_jsonl,
    read_model_json,
    read_torch,
    sha256_file,
    verify_files,
    write_atomic,
    write_json,
    write_text,
    write_torch,
)
from crys_pipeline.io.graph_shards import GraphArrays, decode_graphs, encode_graphs, read_graph_dir
from crys_pipeline.io.hdf5 import (
    EmbeddingsPartial,
    h5_summary,
    np_dtype,
    open_embeddings_partial,
    partial_path,
    read_embedding_flags,
    read_embeddings,
    verify_embeddings,
)
from crys_pipeline.io.parquet import (
    check_meta,
    parquet_head,
    read_meta,
    read_parquet,
    write_parquet,
)
from crys_pipeline.io.tokens import TokenFileWriter, TokenStates, read_tokens, verify_tokens, write_token_file
from crys_pipeline.schemas import META_KEY

__all__ = [
    "CHECKSUM_KEY", "META_KEY", "ArtifactError", "DiskFullError", "EmbeddingsPartial", "GraphArrays",
    "TokenFileWriter", "TokenStates",
    "check_lineage", "check_meta", "corrupt", "decode_graphs", "encode_graphs", "h5_summary", "naming_a_full_disk",
    "np_dtype", "open_embeddings_partial", "parquet_head", "partial_path", "read_embedding_flags", "read_embeddings",
    "read_graph_dir", "read_json", "read_jsonl", "read_meta", "read_model_json", "read_parquet", "read_tokens",
    "read_torch", "sha256_file", "verify_embeddings", "verify_files", "verify_tokens", "write_atomic", "write_json",
    "write_parquet", "write_text", "write_token_file", "write_torch",
]
