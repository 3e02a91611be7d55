"""Settings and variants have one home each: config.yaml, the schema, the CLI and the rules agree with it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, default_config

from crys_pipeline import cli, settings
from crys_pipeline.config import validate_config
from crys_pipeline.schemas import TEXT_VIEWS
from crys_pipeline.variants import VARIANTS, variant

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
#: config.yaml block -> the crys-pipeline subcommand that takes its job settings as flags.
COMMANDS = {"splits": ["splits"], "describe": ["describe", "shard"], "sections": ["sections"], "embed": ["embed"],
            "graphs": ["graphs"], "model": ["train"], "train": ["train"]}


def _commented_keys(block: str) -> dict[str, str]:
    """{key: comment} of the lines of one top-level block of config.yaml."""
    text = (REPO / "config.yaml").read_text()
    body = re.search(rf"^{block}:\n((?:[ #].*\n|\n)*)", text, re.MULTILINE).group(1)
    return {m.group(1): m.group(2) for m in re.finditer(r"^  (\w+):[^#\n]*(?:#\s*(.*))?$", body, re.MULTILINE)}


@pytest.mark.parametrize("block", list(settings.STAGES))
def test_config_blocks_list_exactly_the_settings_fields_each_commented(block: str) -> None:
    cls = settings.STAGES[block]
    keys = _commented_keys(block)
    assert list(keys) == [f.name for f in settings.configurable(cls)], \
        f"config.yaml {block}: keys differ from {cls.__name__}"
    assert all(keys.values()), f"config.yaml {block}: uncommented keys {[k for k, v in keys.items() if not v]}"
    settings.make(cls, yaml.safe_load((REPO / "config.yaml").read_text())[block])  # values pass the field checks


@pytest.mark.parametrize("block", list(settings.STAGES))
def test_schema_block_is_the_dataclass(block: str) -> None:
    cls = settings.STAGES[block]
    schema = settings.config_schema(yaml.safe_load(SCHEMA.read_text()))["properties"][block]
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == [f.name for f in settings.configurable(cls)]
    for f in settings.configurable(cls):
        prop = schema["properties"][f.name]
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        assert prop["default"] == default and prop["description"] == f.metadata["doc"]
        if f.metadata["choices"]:
            assert set(prop["enum"]) - {None} == set(f.metadata["choices"])
    hand_written = yaml.safe_load(SCHEMA.read_text())["properties"]
    assert block not in hand_written, f"{block} is generated from {cls.__name__}; the schema file must not list it"


@pytest.mark.parametrize("block", list(COMMANDS))
def test_cli_flags_round_trip_the_rule_params(block: str) -> None:
    """The flags a rule renders from the merged paper config parse back to exactly those settings."""
    cls = settings.STAGES[block]
    cfg = default_config("config/paper.yaml")
    validate_config(cfg, SCHEMA)
    words = settings.cli_args(cls, cfg[block]).split()
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser, cls)
    parsed = settings.from_arguments(cls, parser.parse_args([w.strip("'") for w in words]))
    assert settings.stamp(parsed) == settings.stamp(settings.make(cls, cfg[block]))
    command = cli.build_parser()._subparsers._group_actions[0].choices[COMMANDS[block][0]]
    if len(COMMANDS[block]) > 1:
        command = command._subparsers._group_actions[0].choices[COMMANDS[block][1]]
    flags = {opt for action in command._actions for opt in action.option_strings}
    for f in settings.scoped(cls):
        command = " ".join(COMMANDS[block])
        assert "--" + f.name.replace("_", "-") in flags, f"crys-pipeline {command}: no flag for {f.name}"
    assert not any("--" + f.name.replace("_", "-") in flags for f in settings.scoped(cls, settings.WORKFLOW))


def test_a_setting_change_changes_only_its_stage_params() -> None:
    cfg = default_config()
    validate_config(cfg, SCHEMA)
    before = {block: settings.cli_args(cls, cfg[block]) for block, cls in settings.STAGES.items()}
    cfg["model"]["hidden_features"] = 48
    cfg["train"]["jobs_per_gpu"] = 4  # a workflow setting: reaches no job
    after = {block: settings.cli_args(cls, cfg[block]) for block, cls in settings.STAGES.items()}
    assert [b for b in before if before[b] != after[b]] == ["model"]
    assert "--hidden-features 48" in after["model"] and "jobs-per-gpu" not in after["train"]


def test_bad_values_name_the_class_field_and_rule() -> None:
    with pytest.raises(ValueError, match=r"EmbedSettings.pooling = 'max': must be one of \['cls', 'mean'\]"):
        settings.EmbedSettings(pooling="max")
    with pytest.raises(ValueError, match=r"SplitSettings.train_ratio = 1.5: must be <= 1"):
        settings.SplitSettings(train_ratio=1.5)
    with pytest.raises(ValueError, match=r"GraphSettings.cutoff = 0: must be > 0"):
        settings.GraphSettings(cutoff=0)
    with pytest.raises(ValueError, match=r"unknown settings \['epoch'\]"):
        settings.make(settings.TrainSettings, {"epoch": 3})
    cfg = default_config()
    cfg["train"]["epochs"] = 0
    cfg["embed"]["pooling"] = "max"
    with pytest.raises(ValueError, match=r"config\.embed\.pooling: 'max' is not one of") as err:
        validate_config(cfg, SCHEMA)
    assert "config.train.epochs: 0 is less than the minimum of 1" in str(err.value)


def test_validation_fills_defaults_from_the_dataclasses() -> None:
    cfg = default_config()
    del cfg["train"]["eval_batch_size"], cfg["attention"]
    validate_config(cfg, SCHEMA)
    assert cfg["train"]["eval_batch_size"] == settings.TrainSettings().eval_batch_size == 256
    assert cfg["attention"] == settings.stamp(settings.AttentionSettings()) | {"layer": 5}


def test_variants_table_is_the_only_list(tmp_path: Path) -> None:
    from crys_pipeline.models.registry import build_model

    small = settings.ModelSettings(hidden_features=8, alignn_layers=1, gcn_layers=1)
    schema = settings.config_schema(yaml.safe_load(SCHEMA.read_text()))
    assert schema["$defs"]["table"]["properties"]["variants"]["items"]["enum"] == list(VARIANTS)
    assert all(v.text_view in (None, *TEXT_VIEWS) for v in VARIANTS.values())
    for name, spec in VARIANTS.items():
        model = build_model(name, small, atom_table=None, text_dim=4)
        assert (model.graph_encoder is not None) == bool(spec.graph_encoder), name
    with pytest.raises(ValueError, match="unknown model variant 'crysmmnett'"):
        variant("crysmmnett")
    repeated = []
    for path in [*REPO.glob("crys_pipeline/**/*.py"), *REPO.glob("workflow/**/*.smk"), REPO / "Snakefile",
                 *REPO.glob("bench/*.py"), SCHEMA]:
        text = path.read_text()
        if path.name != "variants.py" and "crysmmnet_gatgnn" in text:
            repeated.append(str(path.relative_to(REPO)))
        if path.name != "schemas.py" and re.search(r"""["']full["'], ["']global["'], ["']local["']""", text):
            repeated.append(f"{path.relative_to(REPO)} (text views)")
    assert not repeated, f"variant names listed outside variants.py / schemas.TEXT_VIEWS: {repeated}"
