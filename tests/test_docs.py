"""The configuration reference in docs/configuration.md stays in step with corebase/settings.py."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec
import pytest

from corebase.settings import ENV_ALIASES, ENV_PREFIX, Settings, load_settings

CONFIGURATION_DOC = Path(__file__).parent.parent / "docs" / "configuration.md"
FILE_ONLY = "config file only"
# A table row: | `setting` | variables | `default` | meaning |
ROW = re.compile(r"^\| `(?P<name>[a-z_.<>]+)` \| (?P<variables>[^|]+) \| `(?P<default>[^`]*)` \| (?P<meaning>.+) \|$")


def documented_settings() -> dict[str, dict[str, str]]:
    rows = {}
    for line in CONFIGURATION_DOC.read_text().splitlines():
        match = ROW.match(line)
        if match:
            rows[match["name"]] = match.groupdict()
    return rows


def expected_settings() -> dict[str, tuple[list[str], object]]:
    """Map each setting's documented name to its variables and its default, from the Settings structs."""
    aliases = {setting: name for name, setting in ENV_ALIASES.items()}
    expected = {}
    for section in msgspec.inspect.type_info(Settings).fields:
        section_type = section.type.cls
        defaults = msgspec.to_builtins(section_type())
        for field in msgspec.inspect.type_info(section_type).fields:
            name = f"{section.name}.{field.name}"
            value_type = getattr(field.type, "value_type", None)
            if isinstance(value_type, msgspec.inspect.StructType):
                # A table of tables keyed by the deployer's names, such as [pool.pools.python].
                expected[name] = ([], defaults[field.name])
                expected.update(nested_settings(name, value_type.cls))
                continue
            variables = [f"{ENV_PREFIX}{section.name.upper()}_{field.name.upper()}"]
            if (section.name, field.name) in aliases:
                variables.append(aliases[(section.name, field.name)])
            expected[name] = (sorted(set(variables)), defaults[field.name])
    return expected


def nested_settings(parent: str, struct_type: type) -> dict[str, tuple[list[str], object]]:
    key = {"pool.pools": "<template>", "security.roles": "<role>"}.get(parent, "<name>")
    defaults = msgspec.to_builtins(struct_type())
    return {
        f"{parent}.{key}.{field.name}": ([], defaults.get(field.name))
        for field in msgspec.inspect.type_info(struct_type).fields
    }


def parse_default(text: str) -> object:
    if text == "unset":
        return None
    return tomllib.loads(f"value = {text}")["value"]


def test_every_setting_is_documented():
    missing = sorted(set(expected_settings()) - set(documented_settings()))
    assert missing == [], (
        f"add a row for each of these settings to {CONFIGURATION_DOC.name}, in the table of its section: "
        "| `section.name` | `COREBASE_SECTION_NAME` | `default as TOML` | meaning |"
    )


def test_no_documented_setting_is_unknown():
    unknown = sorted(set(documented_settings()) - set(expected_settings()))
    assert unknown == [], f"{CONFIGURATION_DOC.name} documents settings that corebase/settings.py does not have"


@pytest.mark.parametrize("name", sorted(expected_settings()))
def test_setting_row_matches_code(name):
    variables, default = expected_settings()[name]
    row = documented_settings().get(name)
    if row is None:
        pytest.fail(f"{name} has no row in {CONFIGURATION_DOC.name}")

    documented_variables = sorted(re.findall(r"`(COREBASE_\w+)`", row["variables"]))

    assert documented_variables == variables
    if not variables:
        assert row["variables"].strip() == FILE_ONLY
    assert parse_default(row["default"]) == default


def test_toml_examples_load(tmp_path):
    examples = re.findall(r"```toml\n(.*?)```", CONFIGURATION_DOC.read_text(), flags=re.DOTALL)
    assert examples, "the configuration reference shows no TOML example"
    for index, example in enumerate(examples):
        config = tmp_path / f"example-{index}.toml"
        config.write_text(example)
        load_settings(config, environ={})
