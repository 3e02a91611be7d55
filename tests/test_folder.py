"""The `folder` provider: an ALIGNN-style folder (structure files + id_prop.csv) through download and ingest.

Each bad-input case asserts the reason a user reads in the rejected table; the seed-123 split of a
folder is checked against ALIGNN's own `get_id_train_val_test` over the id_prop rows.
"""

from __future__ import annotations

import csv
import importlib.util
import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA

from crys_pipeline import ingest, splits
from crys_pipeline.io import read_json, read_meta, read_parquet
from crys_pipeline.settings import SplitSettings
from crys_pipeline.sources import folder

TARGETS = {"fe": {"field": "target", "unit": "eV/atom", "transform": "none", "split": "random123"}}
_OPENED: list[list[str]] = []  # while `opened_files` records: the paths this process opens


def _audit(event: str, args: tuple) -> None:
    if _OPENED and event == "open" and isinstance(args[0], str | Path):
        _OPENED[-1].append(str(args[0]))


@contextmanager
def opened_files() -> Iterator[list[str]]:
    """The paths of every file this process opens inside the block, from Python's audit event `open`
    (raised by open(), os.open() and Path.read_*; a hook cannot be removed, so it is added once)."""
    if not hasattr(_audit, "added"):
        sys.addaudithook(_audit)
        _audit.added = True
    _OPENED.append([])
    try:
        yield _OPENED[-1]
    finally:
        _OPENED.pop()


def _example_module():
    spec = importlib.util.spec_from_file_location("make_example_folder", REPO / "examples" / "make_example_folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_example(dest: Path, count: int) -> list[tuple[str, float]]:
    """`count` real JARVIS structures as POSCAR/CIF files and a headerless id_prop.csv (the shipped script)."""
    return _example_module().make_folder(SHARED_DATA / "jarvis_dft3d_2021_structures.jsonl.gz", dest, count, 8)


def write_table(root: Path, rows: list[list[str]], name: str = "id_prop.csv") -> None:
    with open(root / name, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)


def run_ingest(root: Path, work: Path, targets: dict | None = None, split_ids: dict | None = None,
               file_format: str = "auto") -> tuple[list[dict], dict[str, str], Path]:
    """download + ingest of a folder: (structures rows, rejected {id: reason}, structures path)."""
    manifest = work / "manifest.json"
    folder.fetch_folder("mine", root_dir=root, id_prop="id_prop.csv", file_format=file_format,
                        split_ids=split_ids, out=manifest)
    out, rejected = work / "s.parquet", work / "r.parquet"
    targets = targets or TARGETS
    ingest.ingest(manifest, targets=targets, subset=None, stratify_target=next(iter(targets)), out=out,
                  rejected_out=rejected)
    bad = {r["material_id"]: r["reason"] for r in read_parquet(rejected, "rejected").to_pylist()}
    return read_parquet(out, "structures").to_pylist(), bad, out


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[str, float]]]:
    root = tmp_path_factory.mktemp("example") / "crystals"
    return root, make_example(root, 6)


def _copy(example: tuple[Path, list], dest: Path) -> tuple[Path, list[list[str]]]:
    import shutil

    root = dest / "crystals"
    shutil.copytree(example[0], root)
    return root, [[name, repr(value)] for name, value in example[1]]


def test_clean_folder_every_row_kept_in_table_order(example, tmp_path: Path) -> None:
    rows, bad, _ = run_ingest(example[0], tmp_path)
    assert bad == {}
    assert [(r["material_id"], r["fe"]) for r in rows] == example[1]
    assert {Path(r["material_id"]).suffix for r in rows} == {".vasp", ".cif"}
    manifest = read_json(tmp_path / "manifest.json")
    assert sorted(manifest["folder"]["listed"]) == sorted(name for name, _ in example[1])
    assert manifest["folder"]["unlisted"] == []


def test_bad_rows_are_rejected_with_the_reason_a_user_reads(example, tmp_path: Path) -> None:
    root, rows = _copy(example, tmp_path)
    good = rows[0][0]
    (root / "garbage.vasp").write_text("this is not a POSCAR\n")
    (root / "overlap.vasp").write_text("overlap\n1.0\n4 0 0\n0 4 0\n0 0 4\nNa Cl\n1 1\ndirect\n0 0 0\n0.01 0 0\n")
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.cif import CifWriter

    CifWriter(Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])).write_file(root / "alloy.cif")
    write_table(root, [*rows[:3], ["ghost.vasp", "1.0"], ["garbage.vasp", "1.0"], ["overlap.vasp", "1.0"],
                       ["alloy.cif", "1.0"], [rows[3][0], "abc"], [rows[4][0], "inf"], [good, "2.0"]])
    kept, bad, _ = run_ingest(root, tmp_path)
    assert [r["material_id"] for r in kept] == [r[0] for r in rows[:3]]
    assert bad["ghost.vasp"] == (f"id_prop.csv line 4: ghost.vasp: missing file: {root.resolve()}/ghost.vasp "
                                 "does not exist")
    assert bad["garbage.vasp"].startswith("id_prop.csv line 5: garbage.vasp: unreadable poscar file:")
    assert bad["overlap.vasp"] == "atoms closer than 0.5 A (min distance 0.040 A)"
    assert bad["alloy.cif"].startswith("id_prop.csv line 7: alloy.cif: disordered structure (partial occupancies")
    assert bad[rows[3][0]] == f"id_prop.csv line 8: {rows[3][0]}: target 'target' = 'abc' is not a finite number"
    assert bad[rows[4][0]] == f"id_prop.csv line 9: {rows[4][0]}: target 'target' = 'inf' is not a finite number"
    assert bad["id_prop.csv:10"] == (f"id_prop.csv line 10: duplicate filename {good!r} (first listed on line 1); "
                                     "this row is not used")
    assert len(kept) + len(bad) == 10  # every table row ends in exactly one of the two tables


def test_unlisted_files_are_counted_and_reported_not_used(example, tmp_path: Path, caplog) -> None:
    root, rows = _copy(example, tmp_path)
    write_table(root, rows[:4])
    with caplog.at_level(logging.WARNING):
        kept, bad, out = run_ingest(root, tmp_path)
    assert len(kept) == 4 and bad == {}
    unlisted = sorted(r[0] for r in rows[4:])
    assert read_json(tmp_path / "manifest.json")["folder"]["unlisted"] == unlisted
    assert read_meta(out)["n_unlisted"] == 2
    assert "2 files in" in caplog.text and "are not listed in id_prop.csv and are not used" in caplog.text


def test_a_changed_file_is_refused_until_download_reruns(example, tmp_path: Path) -> None:
    root, _ = _copy(example, tmp_path)
    manifest = tmp_path / "manifest.json"
    folder.fetch_folder("mine", root_dir=root, id_prop="id_prop.csv", file_format="auto", split_ids=None,
                        out=manifest)
    changed = root / example[1][0][0]
    changed.write_text(changed.read_text().replace("\n", "\n\n", 1))
    with pytest.raises(ValueError, match=f"{changed} changed since download"):
        ingest.ingest(manifest, targets=TARGETS, subset=None, stratify_target="fe",
                      out=tmp_path / "s.parquet", rejected_out=tmp_path / "r.parquet")


def test_header_names_several_targets_and_a_split_column(example, tmp_path: Path) -> None:
    root, rows = _copy(example, tmp_path)
    labels = ["train", "train", "val", "test", "train", "holdout"]
    write_table(root, [["file", "fe", "gap", "split"]] + [[n, v, "" if i == 1 else str(i), labels[i]]
                                                         for i, (n, v) in enumerate(rows)])
    targets = {"fe": {"field": "fe", "unit": "eV/atom", "transform": "none", "split": "official"},
               "gap": {"field": "gap", "unit": "eV", "transform": "none", "split": "official"}}
    kept, bad, _ = run_ingest(root, tmp_path, targets)
    assert bad == {rows[5][0]: f"id_prop.csv line 7: {rows[5][0]}: split 'holdout' is not one of "
                               "['train', 'val', 'test']"}
    assert [r["gap"] for r in kept] == [0.0, None, 2.0, 3.0, 4.0]  # an empty cell is a missing value
    assert [r["split_fe"] for r in kept] == labels[:5]


def test_fixed_split_id_lists(example, tmp_path: Path) -> None:
    root, rows = _copy(example, tmp_path)
    names = [r[0] for r in rows]
    split_ids = {"train": names[:4], "val": names[4:5], "test": names[5:]}
    targets = {"fe": {**TARGETS["fe"], "split": "official"}}
    _, _, out = run_ingest(root, tmp_path, targets, split_ids)
    full, _ = splits.make_splits(out, target="fe", method="official", settings=SplitSettings(),
                                 out_full=tmp_path / "f.json", out_low20=tmp_path / "l.json")
    assert (full["id_train"], full["id_val"], full["id_test"]) == (names[:4], names[4:5], names[5:])
    with pytest.raises(ValueError, match=r"split_ids.test: 'nope.cif' is not listed in"):
        run_ingest(root, tmp_path, targets, {"test": ["nope.cif"]})


def test_extended_xyz_with_a_lattice(tmp_path: Path) -> None:
    import ase
    import ase.io

    root = tmp_path / "crystals"
    root.mkdir()
    ase.io.write(root / "nacl.xyz", ase.Atoms("NaCl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[3.2] * 3,
                                              pbc=True), format="extxyz")
    ase.io.write(root / "mol.xyz", ase.Atoms("H2", positions=[[0, 0, 0], [0.74, 0, 0]]), format="extxyz")
    write_table(root, [["nacl.xyz", "-1.5"], ["mol.xyz", "0.1"]])
    kept, bad, _ = run_ingest(root, tmp_path, file_format="xyz")
    assert [(r["material_id"], r["species"]) for r in kept] == [("nacl.xyz", ["Na", "Cl"])]
    assert "an xyz file without a lattice" in bad["mol.xyz"]


def test_seed123_split_of_a_folder_is_alignns(tmp_path: Path) -> None:
    """ALIGNN's train_alignn reads id_prop.csv rows in order (id = file name) and splits the indices with
    get_id_train_val_test(split_seed=123); the folder source must give the same ids."""
    from alignn.data import get_id_train_val_test

    root = tmp_path / "crystals"
    make_example(root, 24)
    with open(root / "id_prop.csv", newline="") as handle:
        alignn_ids = [row[0] for row in csv.reader(handle)]
    ref = get_id_train_val_test(total_size=len(alignn_ids), split_seed=123, train_ratio=0.8, val_ratio=0.1,
                                test_ratio=0.1)
    _, _, out = run_ingest(root, tmp_path)
    full, _ = splits.make_splits(out, target="fe", method="random123", settings=SplitSettings(),
                                 out_full=tmp_path / "f.json", out_low20=tmp_path / "l.json")
    assert [full[k] for k in ("id_train", "id_val", "id_test")] == [[alignn_ids[i] for i in part] for part in ref]


def test_config_errors_name_the_source_and_key(tmp_path: Path) -> None:
    from conftest import default_config, snakemake_in

    cfg = default_config()
    (tmp_path / "empty").mkdir()
    target = {"e": {"field": "target", "unit": "eV", "split": "random123"}}
    cfg["sources"]["no_root"] = {"provider": "folder", "targets": target}
    cfg["sources"]["no_table"] = {"provider": "folder", "root_dir": str(tmp_path / "empty"), "targets": target}
    cfg["sources"]["jarvis_dft_3d_2021"]["split_ids"] = {"test": ["a.cif"]}
    make_example(tmp_path / "unlabelled", 2)
    cfg["sources"]["unlabelled"] = {"provider": "folder", "root_dir": str(tmp_path / "unlabelled"),
                                    "targets": {"e": {"field": "target", "unit": "eV", "split": "official"}}}
    result = snakemake_in(tmp_path / "work", "-n", "results/table1.csv", config=cfg)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "config: sources.no_root (provider folder) needs `root_dir`" in out
    assert f"config: sources.no_table: {tmp_path / 'empty' / 'id_prop.csv'} does not exist" in out
    assert "config: sources.jarvis_dft_3d_2021.split_ids does not apply to provider jarvis" in out
    assert (f"config: sources.unlabelled.targets.e.split is official, but {tmp_path / 'unlabelled' / 'id_prop.csv'} "
            "has no `split` column with a label and no split_ids are given; use split: random123") in out


@pytest.mark.parametrize(("labelled", "method"), [(False, "random123"), (True, "official")])
def test_split_auto_is_random123_unless_the_folder_has_labels(example, tmp_path: Path, labelled: bool,
                                                              method: str) -> None:
    from conftest import default_config, snakemake_in

    root, rows = _copy(example, tmp_path)
    if labelled:
        write_table(root, [["name", "target", "split"]] + [[n, v, "train"] for n, v in rows])
    cfg = default_config()
    cfg["sources"]["mine"] = {"provider": "folder", "root_dir": str(root),
                              "targets": {"e": {"field": "target", "unit": "eV"}}}  # split: auto (the default)
    result = snakemake_in(tmp_path / "work", "-n", "-p", "results/splits/mine/e/full.json", config=cfg)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"--target e --method {method} " in result.stdout


def test_a_bad_value_on_the_first_row_of_a_headerless_table_is_a_rejected_row(example, tmp_path: Path) -> None:
    root, rows = _copy(example, tmp_path)
    write_table(root, [[rows[0][0], "n/a"], *rows[1:]])
    kept, bad, _ = run_ingest(root, tmp_path)
    assert len(kept) == 5
    assert bad == {rows[0][0]: f"id_prop.csv line 1: {rows[0][0]}: target 'target' = 'n/a' is not a finite number"}


def test_a_folder_where_every_row_is_rejected_stops_with_the_first_reason(example, tmp_path: Path) -> None:
    root, _ = _copy(example, tmp_path)
    write_table(root, [["ghost.vasp", "1.0"], ["ghost2.cif", "2.0"]])
    with pytest.raises(ValueError, match=r"mine: all 2 entries were rejected, e.g. id_prop.csv line 1: ghost.vasp: "
                                         "missing file"):
        run_ingest(root, tmp_path)


def test_paths_outside_the_folder_are_refused_and_never_opened(example, tmp_path: Path, caplog) -> None:
    """Issue 23 case 1: a symlink leaving the folder, `..` and an absolute path are refused unread."""
    root, rows = _copy(example, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "passwd"
    secret.write_text("daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n")
    stolen = outside / "stolen.vasp"  # a real structure, but not in the folder
    shutil.copy(root / rows[0][0], stolen)
    (root / "link.vasp").symlink_to(secret)
    (root / "ext.vasp").symlink_to(stolen)
    (root / "alias.vasp").symlink_to(rows[2][0])  # a symlink that stays inside the folder is a file of it
    write_table(root, [*rows, ["link.vasp", "1.0"], ["ext.vasp", "2.0"], ["../outside/stolen.vasp", "3.0"],
                       [str(secret), "4.0"], ["alias.vasp", "5.0"]])
    with opened_files() as opened, caplog.at_level(logging.INFO):
        kept, bad, _ = run_ingest(root, tmp_path)
    assert [r["material_id"] for r in kept] == [r[0] for r in rows] + ["alias.vasp"]
    where = f"which is outside the folder {root.resolve()}; only files inside root_dir are read"
    assert bad == {
        "link.vasp": f"id_prop.csv line 7: link.vasp: refused: resolves to {secret.resolve()}, {where}",
        "ext.vasp": f"id_prop.csv line 8: ext.vasp: refused: resolves to {stolen.resolve()}, {where}",
        "../outside/stolen.vasp": f"id_prop.csv line 9: ../outside/stolen.vasp: refused: resolves to "
                                  f"{stolen.resolve()}, {where}",
        str(secret): f"id_prop.csv line 10: {secret}: refused: resolves to {secret.resolve()}, {where}",
    }
    assert any(Path(p).name == rows[0][0] for p in opened)  # the hook sees the files that are read
    assert not {Path(p).resolve() for p in opened} & {secret.resolve(), stolen.resolve()}
    assert "daemon" not in caplog.text
    listed = read_json(tmp_path / "manifest.json")["folder"]["listed"]
    assert sorted(listed) == sorted([r[0] for r in rows] + ["alias.vasp"])
    inputs = {p.resolve() for p in folder.listed_files(root, "id_prop.csv")}  # the download rule's inputs
    assert not inputs & {secret.resolve(), stolen.resolve()}
    assert "4 rows of id_prop.csv name files outside" in caplog.text


def test_rows_may_name_files_in_subfolders(example, tmp_path: Path) -> None:
    """Issue 23 case 2: `s/x.vasp` names a file in a subfolder (as ALIGNN's root_dir allows)."""
    root, rows = _copy(example, tmp_path)
    (root / "s" / "t").mkdir(parents=True)
    named = []
    for index, (name, value) in enumerate(rows):
        sub = ("", "s/", "s/t/")[index % 3]
        (root / name).rename(root / sub / name)
        named.append([sub + name, value])
    (root / "s" / "notes.cif").write_text("not listed\n")
    write_table(root, named)
    kept, bad, _ = run_ingest(root, tmp_path)
    assert bad == {}
    assert [(r["material_id"], r["fe"]) for r in kept] == [(n, float(v)) for n, v in named]
    manifest = read_json(tmp_path / "manifest.json")
    assert sorted(manifest["folder"]["listed"]) == sorted(n for n, _ in named)
    assert manifest["folder"]["unlisted"] == ["s/notes.cif"]
    assert folder.listed_files(root, "id_prop.csv")[1:] == sorted(root / n for n, _ in named)


@pytest.mark.parametrize("header", [False, True])
def test_an_excel_csv_utf8_table_keeps_its_first_row(example, tmp_path: Path, header: bool) -> None:
    """Issue 23 case 4: Excel's "CSV UTF-8" starts with a byte-order mark and ends lines with CRLF."""
    root, rows = _copy(example, tmp_path)
    lines = [["filename", "target"]] * header + rows
    (root / "id_prop.csv").write_bytes(b"\xef\xbb\xbf" + "".join(f"{a},{b}\r\n" for a, b in lines).encode())
    kept, bad, _ = run_ingest(root, tmp_path)
    assert bad == {}
    assert [(r["material_id"], r["fe"]) for r in kept] == [(n, float(v)) for n, v in rows]


def test_a_table_that_is_not_utf8_stops_the_config_check_with_the_fix(example, tmp_path: Path) -> None:
    from conftest import default_config, snakemake_in

    root, rows = _copy(example, tmp_path)
    (root / "id_prop.csv").write_bytes("".join(f"{a},{b}\r\n" for a, b in rows).encode() + "é.cif,1\r\n"
                                       .encode("cp1252"))  # Excel's plain "CSV (Comma delimited)" on Windows
    cfg = default_config()
    cfg["sources"]["mine"] = {"provider": "folder", "root_dir": str(root),
                              "targets": {"e": {"field": "target", "unit": "eV"}}}
    result = snakemake_in(tmp_path / "work", "-n", "results/structures/mine.parquet", config=cfg)
    assert result.returncode != 0
    assert (f"config: sources.mine: {root}/id_prop.csv is not UTF-8 text (byte 0xe9 on line 7); save it as "
            "\"CSV UTF-8\" (Excel: File > Save As > CSV UTF-8)") in result.stdout + result.stderr


def test_an_empty_split_cell_is_a_missing_label_and_the_counts_add_up(example, tmp_path: Path, caplog) -> None:
    """Issue 23 case 5: an empty `split` cell is no label (not a rejected row); selected = kept + rejected."""
    root, rows = _copy(example, tmp_path)
    labels = ["train", "", "val", "na", "test", "train"]
    write_table(root, [["file", "target", "split"], *[[n, v, labels[i]] for i, (n, v) in enumerate(rows)],
                       ["ghost.vasp", "1.0", "train"]])
    targets = {"fe": {**TARGETS["fe"], "split": "official"}}
    with caplog.at_level(logging.INFO):
        kept, bad, out = run_ingest(root, tmp_path, targets)
    assert [(r["material_id"], r["split_fe"]) for r in kept] == [
        (n, None if label in ("", "na") else label) for (n, _), label in zip(rows, labels, strict=True)]
    assert list(bad) == ["ghost.vasp"]
    meta = read_meta(out)
    assert (meta["n_snapshot"], meta["n_selected"], meta["n_rejected"]) == (7, 7, 1)
    assert "mine: 7 entries, 7 selected, 6 kept, 1 rejected" in caplog.text
    assert f"mine: rejected id_prop.csv line 8: ghost.vasp: missing file: {root.resolve()}/ghost.vasp does " \
           "not exist" in caplog.text
    assert "unreadable" not in caplog.text
    assert "mine: 2 of 7 rows of id_prop.csv have no split label (an empty or `na` cell, e.g. line 3: " \
           f"{rows[1][0]}); a target with split official leaves them out of train, val and test" in caplog.text
    full, _ = splits.make_splits(out, target="fe", method="official", settings=SplitSettings(),
                                 out_full=tmp_path / "f.json", out_low20=tmp_path / "l.json")
    assert (full["id_train"], full["id_val"], full["id_test"]) == ([rows[0][0], rows[5][0]], [rows[2][0]],
                                                                   [rows[4][0]])
    write_table(root, [["file", "target", "split"], *[[n, v, ""] for n, v in rows]])
    assert not folder.has_split_labels(root, "id_prop.csv", None)  # so split: auto is random123


def test_an_edit_that_keeps_the_modification_time_reruns_download(example, tmp_path: Path) -> None:
    """Issue 23 case 14: `touch -r` after an edit hides it from Snakemake's mtime check; the checksum does not."""
    from conftest import default_config, snakemake_in
    from test_workflow import job_counts

    root, rows = _copy(example, tmp_path)
    cfg = default_config()
    cfg["sources"]["mine"] = {"provider": "folder", "root_dir": str(root),
                              "targets": {"e": {"field": "target", "unit": "eV"}}}
    work, out = tmp_path / "work", "results/structures/mine.parquet"
    assert snakemake_in(work, "--cores", "1", out, config=cfg).returncode == 0
    table = root / "id_prop.csv"
    shutil.copy2(table, tmp_path / "reference")
    write_table(root, [[rows[0][0], "-9.5"], *rows[1:]])  # a corrected value, then the old time put back
    subprocess.run(["touch", "-r", str(tmp_path / "reference"), str(table)], check=True)
    plan = snakemake_in(work, "-n", out)
    assert job_counts(plan.stdout) == {"download": 1, "ingest": 1}, plan.stdout[-3000:]
    assert "Params have changed since last execution" in plan.stdout
    assert snakemake_in(work, "--cores", "1", out).returncode == 0
    assert read_parquet(work / out, "structures").to_pylist()[0]["e"] == -9.5
