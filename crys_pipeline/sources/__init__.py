"""Data providers: one module per provider, each reading its snapshot as canonical `RawRecord`s.

- `jarvis`: providers `jarvis` and `mp` (the JARVIS-tools releases of JARVIS-DFT and Materials Project 2018);
- `folder`: provider `folder` (your own structure files plus an ALIGNN-style id_prop table);
- `records`: the `RawRecord` both yield, which `ingest` validates.

`ingest.read_snapshot` picks the reader of a download manifest's provider; the readers import nothing of `ingest`.
"""
