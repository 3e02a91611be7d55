"""Every command the README and the configs document runs as written (issue 17, case 11).

`snakemake` commands are dry-run (`-n`) in their own working directory holding copies of config/ and
profiles/ (snapshot folders made absolute); `crys-pipeline` commands must parse.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, absolute_snapshots, snakemake_in
from test_folder import make_example

DOCS = ["README.md", "config.yaml", "config/tiny.yaml", "config/paper.yaml", "config/example_folder.yaml",
        "profiles/slurm/config.yaml", "profiles/default/config.yaml"]


def documented(tool: str) -> list[str]:
    """Commands starting with `tool` in code blocks, inline code and config comments ('# Use with: ...')."""
    found = []
    for name in DOCS:
        text = (REPO / name).read_text().replace("\\\n", " ")
        found += re.findall(rf"`({tool} [^`]+)`", text)
        found += [m.split("  #")[0].strip() for m in re.findall(rf"^(?:#\s*(?:Use with:)?\s*)?({tool} .+)$", text,
                                                                re.MULTILINE)]
    commands = {" ".join(c.split("   (")[0].split()) for c in found if "PATH" not in c and "RUN_DIR" not in c}
    return sorted(c for c in commands if tool == "snakemake" or " --" in c)  # crys-pipeline: prose names no options


def test_documented_commands_are_found() -> None:
    assert "snakemake --cores 2 results/table1.csv --configfile config/tiny.yaml" in documented("snakemake")
    assert len(documented("snakemake")) >= 8 and len(documented("crys-pipeline")) >= 2


@pytest.mark.parametrize("command", documented("snakemake"))
def test_documented_snakemake_command_plans(command: str, tmp_path: Path) -> None:
    for folder in ("config", "profiles"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    for config in (tmp_path / "config").glob("*.yaml"):
        cfg = absolute_snapshots(yaml.safe_load(config.read_text()))
        for source in cfg.get("sources", {}).values():
            if source.get("provider") == "folder":  # the example folder the README's first command writes
                source["root_dir"] = str(tmp_path / "my_crystals")
                make_example(tmp_path / "my_crystals", 6)
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    result = snakemake_in(tmp_path, "-n", *shlex.split(command)[1:])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


@pytest.mark.parametrize("command", documented("crys-pipeline"))
def test_documented_crys_pipeline_command_parses(command: str) -> None:
    from crys_pipeline.cli import build_parser

    build_parser().parse_args(shlex.split(command)[1:])
