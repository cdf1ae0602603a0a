"""Scenario files: YAML in, validated :class:`actors.config.Scenario` out."""

from pathlib import Path

import yaml

from actors.config import Scenario


def load_scenario(path: str | Path, *, coordination: bool | str | None = None) -> Scenario:
    """Read a scenario file; ``coordination`` (a scheme, or True/False for hybrid/TSO-managed)
    overrides the file's setting when given."""
    data = yaml.safe_load(Path(path).read_text())
    if coordination is not None:
        data["coordination"] = coordination
    return Scenario.model_validate(data)


def dump_scenario(scenario: Scenario, path: Path) -> None:
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False))
