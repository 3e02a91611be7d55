"""The workflow's config: validated against the schema (defaults filled in), then checked across keys.

The schema is the hand-written part (workflow/schemas/config.schema.yaml: sources, tables, report) joined with
the blocks generated from the settings dataclasses (`settings.config_schema`). The cross-key checks are what a
JSON schema cannot say: keys a provider needs, table targets that the source has, a folder's split labels.
Each error names the key, the value and, where it helps, the closest valid names.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from jsonschema import validators

from crys_pipeline.settings import config_schema
from crys_pipeline.sources.folder import has_split_labels


def _with_defaults(validator_class: Any) -> Any:
    """A jsonschema validator class that also fills every missing key that has a schema default."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill_then_check(validator: Any, properties: dict, instance: Any, schema: dict) -> Any:
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": fill_then_check})


def validate_config(config: dict[str, Any], base_schema: Path) -> None:
    """Validate a merged config against the whole schema, fill in the defaults (in place), check across keys.

    Raises:
        ValueError: naming every offending key (dotted path) with the reason.
    """
    schema = config_schema(yaml.safe_load(base_schema.read_text()))
    validator = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"config.{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in errors]
        raise ValueError(f"config does not match the schema ({base_schema} + crys_pipeline/settings.py):\n"
                         + "\n".join(lines))
    check_config(config)


def unknown_choice(what: str, name: object, choices: Iterable[str]) -> ValueError:
    """The error for config key `what` naming `name`, which is not among `choices`, with the closest ones."""
    close = difflib.get_close_matches(str(name), list(choices), n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ValueError(f"config: {what} {name!r} is not one of {sorted(choices)}{hint}")


#: Keys each provider needs and keys that only apply to another provider.
PROVIDER_KEYS = {"jarvis": ["jarvis_key", "stratify_target"], "mp": ["jarvis_key", "stratify_target"],
                 "folder": ["root_dir"]}
FOLDER_ONLY = ("root_dir", "split_ids")  # keys without a non-null schema default


def check_provider_keys(name: str, src: dict[str, Any]) -> list[ValueError]:
    """Errors for keys missing for the source's provider, or set but meaningless for it; a folder source's checks."""
    provider = src["provider"]
    errors = [ValueError(f"config: sources.{name} (provider {provider}) needs `{key}`")
              for key in PROVIDER_KEYS[provider] if not src.get(key)]
    other = FOLDER_ONLY if provider != "folder" else ("snapshot_dir",)
    errors.extend(ValueError(f"config: sources.{name}.{key} does not apply to provider {provider}")
                  for key in other if src.get(key) is not None)
    if provider == "folder" and src.get("root_dir"):
        errors.extend(check_folder(name, src))
    return errors


def check_folder(name: str, src: dict[str, Any]) -> list[ValueError]:
    """Errors of a folder source: no id_prop table, or `split: official` on a folder without split labels."""
    table = Path(src["root_dir"]) / src.get("id_prop", "id_prop.csv")
    if not table.is_file():
        return [ValueError(f"config: sources.{name}: {table} does not exist (relative to {Path.cwd()}); root_dir must "
                           "hold the id_prop table of `filename,target` rows")]
    try:
        if has_split_labels(Path(src["root_dir"]), src.get("id_prop", "id_prop.csv"), src.get("split_ids")):
            return []
    except ValueError as exc:  # a table that cannot be read (not UTF-8, no target column)
        return [ValueError(f"config: sources.{name}: {exc}")]
    return [ValueError(f"config: sources.{name}.targets.{target}.split is official, but {table} has no `split` "
                       "column with a label and no split_ids are given; use split: random123 (ALIGNN's seed-123 "
                       "split) or auto")
            for target, spec in src["targets"].items() if spec.get("split") == "official"]


def check_config(cfg: dict[str, Any]) -> None:
    """Cross-key checks the JSON schema cannot express; each error names the key, the value and the choices."""
    unknown = unknown_choice
    errors = []
    for name, src in cfg["sources"].items():
        errors.extend(check_provider_keys(name, src))
        if src.get("stratify_target") not in (None, "", "all", *src["targets"]):
            errors.append(unknown(f"sources.{name}.stratify_target", src["stratify_target"], [*src["targets"], "all"]))
        folder = src.get("snapshot_dir")
        if folder and not Path(folder).is_dir():
            errors.append(ValueError(
                f"config: sources.{name}.snapshot_dir {folder!r} is not a folder (relative to {Path.cwd()}); "
                "point it at the folder holding the snapshot, or set it to null to download"))
    for table, block in cfg["tables"].items():
        if block["source"] not in cfg["sources"]:
            errors.append(unknown(f"tables.{table}.source", block["source"], cfg["sources"]))
        elif block["targets"] != "all":
            known = cfg["sources"][block["source"]]["targets"]
            errors.extend(unknown(f"tables.{table}.targets", t, known) for t in block["targets"] if t not in known)
    errors.extend(unknown("report.tables", t, cfg["tables"]) for t in cfg["report"]["tables"] if t not in cfg["tables"])
    if errors:
        raise ValueError("\n".join(str(e) for e in errors))
