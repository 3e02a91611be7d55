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

GUIDES = ["README.md", "CHANGELOG.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
DOCS = [*GUIDES, "config.yaml", *sorted(str(p.relative_to(REPO)) for p in (REPO / "config").glob("*.yaml")),
        "profiles/slurm/config.yaml", "profiles/default/config.yaml"]
DOC_PAGES = ["docs/results.md", "docs/performance.md", "docs/artifacts.md", "docs/configuration.md", "docs/cluster.md",
             "docs/method.md"]
HISTORY = re.compile(r"\b(this round|earlier|once printed|previously|no longer|used to be|(?:was|were) (?:now|once)|"
                     r"before (?:this|the last|these) (?:round|change|work))\b", re.IGNORECASE)
LINK = re.compile(r"\[[^\]]+\]\(([^)\s]+)\)")


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


# --- citations: docs/method.md, never the private team note ----------------------------------------------

METHOD = REPO / "docs" / "method.md"
PRIVATE_NOTE = "SPEC" + ".md"  # spelled in two parts so that this file does not mention it
CITATION = re.compile(r"docs/method\.md\s+(§[\d.]+(?:-[\d.]+)?(?:\s*,\s*§[\d.]+(?:-[\d.]+)?)*)")
NOT_SOURCE = {".git", ".venv", "results", "resources", "logs", "benchmarks", ".snakemake", "__pycache__",
              ".pytest_cache", ".ruff_cache", "build", "gpu_check_out", "my_crystals"}


def repository_texts() -> dict[str, str]:
    """Every text file of the checkout (relative path -> text), outputs and environments left out."""
    texts = {}
    for path in sorted(REPO.rglob("*")):
        rel = path.relative_to(REPO)
        if not path.is_file() or NOT_SOURCE.intersection(rel.parts) or rel.parts[0].endswith(".egg-info"):
            continue
        try:
            texts[str(rel)] = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # images
            continue
    return texts


def method_sections() -> set[str]:
    """Section numbers of docs/method.md: "4" for "## 4. ...", "4.2" for "### 4.2 ..."."""
    text = METHOD.read_text()
    return set(re.findall(r"^## (\d+)\. ", text, re.MULTILINE)) | set(
        re.findall(r"^### (\d+\.\d+) ", text, re.MULTILINE))


def cited_sections(text: str) -> list[str]:
    """Every section a text cites as `docs/method.md §x.y` (ranges §a.b-a.d give both ends)."""
    found = []
    for group in CITATION.findall(text):
        for token in re.findall(r"§([\d.]+(?:-[\d.]+)?)", group):
            found += token.rstrip(".").split("-")
    return found


def test_no_file_cites_the_private_note() -> None:
    texts = repository_texts()
    assert "README.md" in texts and "crys_pipeline/train/__init__.py" in texts and "config.yaml" in texts
    offenders = [f"{name}:{n}" for name, text in texts.items()
                 for n, line in enumerate(text.splitlines(), 1) if PRIVATE_NOTE in line]
    assert not offenders, f"{PRIVATE_NOTE} is a private note outside the repository; cite docs/method.md: {offenders}"


def test_method_citations_name_existing_sections() -> None:
    sections = method_sections()
    assert {"1.3", "2.4", "4.6", "10.1"} <= sections
    cited = {name: cited_sections(text) for name, text in repository_texts().items()}
    assert sum(map(len, cited.values())) >= 50 and "2.4" in cited["config.yaml"]
    dangling = [f"{name}: §{s}" for name, numbers in cited.items() for s in numbers if s not in sections]
    assert not dangling, f"citations of sections docs/method.md does not have: {dangling}"


def test_citation_parser() -> None:
    text = "(docs/method.md §4.1-4.5, §7.3), docs/method.md\n§6), docs/method.md §2. Then 3.1"
    assert cited_sections(text) == ["4.1", "4.5", "7.3", "6", "2"]
    assert "2.8" not in method_sections() and "8" in method_sections()


# --- the README and the guides (issue 25) -----------------------------------------------------------------


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)}


def test_readme_is_short_and_every_guide_exists() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) <= 200
    assert all((REPO / page).is_file() for page in DOC_PAGES) and (REPO / "LICENSE").is_file()
    assert set(DOC_PAGES) <= set(GUIDES)


def test_guides_read_as_guides_not_as_history() -> None:
    found = [f"{name}:{n}: {line.strip()}" for name in GUIDES if name != "CHANGELOG.md"
             for n, line in enumerate((REPO / name).read_text().splitlines(), 1) if HISTORY.search(line)]
    assert not found, "history belongs in CHANGELOG.md: " + "; ".join(found)
    assert HISTORY.search("the 3.75x once printed here") and not HISTORY.search("checked before anything runs")


def test_every_link_of_the_guides_resolves() -> None:
    broken = []
    for name in GUIDES:
        for target in LINK.findall((REPO / name).read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            page = (REPO / name).parent / path if path else REPO / name
            if not page.exists():
                broken.append(f"{name}: {target} (no such file)")
            elif anchor and page.suffix == ".md" and anchor not in anchors(page.read_text()):
                broken.append(f"{name}: {target} (no such heading)")
    assert not broken, broken
    assert "table-1-the-main-command" in anchors((REPO / "docs" / "results.md").read_text())
