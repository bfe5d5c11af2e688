"""The key table (config/keys.py) is the one source of truth for config keys.

``config.example.yaml`` and the Ansible role's nested argument specs are
generated from it (``make generate``); these tests fail on any drift between
the table and those files, and check the role's config-key variables against
the table's defaults and choices.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from glance_cache_agent.config import Config, load_config
from glance_cache_agent.config.generate import (
    EXAMPLE_PATH,
    SPECS_PATH,
    example_yaml,
    main,
    role_specs,
)
from glance_cache_agent.config.keys import KEYS, TASK_NAMES, Kind, key, section_keys
from glance_cache_agent.config.validate import parse_default

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "glance_cache_agent"

#: Role variables that set one config key each (see the role's vars/main.yml), and
#: whether the role's default is null because the value then comes from Glance's files.
ROLE_SCALAR_VARS: dict[str, tuple[str, bool]] = {
    "glance_cache_agent_cache_dir": ("cache.dir", False),
    "glance_cache_agent_glance_config": ("cache.glance_config", False),
    "glance_cache_agent_max_size": ("cache.max_size", True),
    "glance_cache_agent_stall_time": ("cache.stall_time", True),
    "glance_cache_agent_lock_path": ("cache.lock_path", True),
    "glance_cache_agent_node_url": ("cache.node_url", True),
    "glance_cache_agent_metrics_listen": ("metrics.listen", False),
    "glance_cache_agent_log_level": ("logging.level", False),
    "glance_cache_agent_log_format": ("logging.format", False),
}
#: Role defaults that differ from the agent's on purpose: the role deploys on a glance-api
#: node, whose glance-api.conf says the driver and database (issue 11).
ROLE_OWN_DEFAULTS: dict[str, Any] = {
    "glance_cache_agent_glance_config": ["/etc/glance/glance-api.conf"],
}
#: Role variables that hold a whole config section as a mapping.
ROLE_SECTION_VARS = {f"glance_cache_agent_{s}": s for s in ("tasks", "prune", "clean", "reconcile")}


def _role_options() -> dict[str, Any]:
    specs = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options: dict[str, Any] = specs["argument_specs"]["main"]["options"]
    return options


def test_example_config_is_generated_from_the_table() -> None:
    assert (REPO / EXAMPLE_PATH).read_text() == example_yaml()


def test_role_argument_specs_are_generated_from_the_table() -> None:
    text = (REPO / SPECS_PATH).read_text()
    assert role_specs(text) == text
    options = _role_options()
    for variable, section in ROLE_SECTION_VARS.items():
        assert "# BEGIN generated: " + section in text, variable
        assert set(options[variable]["options"]) == set(
            TASK_NAMES if section == "tasks" else section_keys(section)
        )


def test_check_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in (EXAMPLE_PATH, SPECS_PATH):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    assert main(["--root", str(tmp_path), "--check"]) == 0
    example = tmp_path / EXAMPLE_PATH
    example.write_text(example.read_text().replace("max_size: 10GiB", "max_size: 20GiB"))
    specs = tmp_path / SPECS_PATH
    specs.write_text(specs.read_text().replace("Images evicted per", "Images per"))
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert capsys.readouterr().err.count("is out of date: run make generate") == 2
    assert main(["--root", str(tmp_path)]) == 0
    assert main(["--root", str(tmp_path), "--check"]) == 0
    assert example.read_text() == (REPO / EXAMPLE_PATH).read_text()


def test_role_config_variables_follow_the_table() -> None:
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    options = _role_options()
    for variable, (name, from_glance) in ROLE_SCALAR_VARS.items():
        row = key(name)
        expected = ROLE_OWN_DEFAULTS.get(variable, None if from_glance else row.default)
        assert defaults[variable] == expected, variable
        assert options[variable].get("choices", []) == list(row.choices), variable
    for variable in ROLE_SECTION_VARS:
        assert defaults[variable] == {}, variable


def test_every_key_has_a_parsable_default_and_a_one_line_doc() -> None:
    names = [row.name for row in KEYS]
    assert len(names) == len(set(names))
    for row in KEYS:
        assert row.doc and "\n" not in row.doc, row.name
        assert (row.kind is Kind.CHOICE) == bool(row.choices), row.name
        if row.default is not None or row.nullable:
            parse_default(row)


def test_tasks_share_one_set_of_keys() -> None:
    shapes = {
        task: [(k, row.kind, row.nullable) for k, row in section_keys(f"tasks.{task}").items()]
        for task in TASK_NAMES
    }
    assert len({tuple(shape) for shape in shapes.values()}) == 1


def test_model_defaults_are_the_tables() -> None:
    """The built-in defaults, the example file and the table all agree."""
    config = Config()
    assert config.cache.max_size == parse_default(key("cache.max_size")) == 10 * 1024**3
    assert config.cache.stall_time == parse_default(key("cache.stall_time")) == 86400.0
    assert config.tasks["reconcile"].jitter == parse_default(key("tasks.reconcile.jitter"))
    assert load_config(str(REPO / EXAMPLE_PATH)) == Config(path=str(REPO / EXAMPLE_PATH))
