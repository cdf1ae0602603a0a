"""Scenario files: YAML in, validated :class:`actors.config.Scenario` out."""

from pathlib import Path

import yaml
from pydantic import ValidationError

from tsodso.actors.config import Scenario


class ScenarioError(ValueError):
    """A scenario file that cannot be read or does not validate: one line naming the file, the key and
    what would be valid."""


def load_scenario(path: str | Path, *, coordination: bool | str | None = None, grids: bool = True) -> Scenario:
    """Read a scenario file; ``coordination`` (a scheme, or True/False for hybrid/TSO-managed)
    overrides the file's setting when given; with ``grids``, every name it gives in a DSO's grid is
    looked up there (:func:`grid_problem`). ScenarioError says what is wrong, and where."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ScenarioError(f"scenario {path}: no such file") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"scenario {path}: not readable YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"scenario {path}: expected a mapping of keys (name, start, end, tso, dsos, bsps, ...)")
    if coordination is not None:
        data["coordination"] = coordination
    for dso in data.get("dsos") or []:  # a grid file is found next to the scenario file
        if isinstance(dso, dict) and str(dso.get("grid", "")).endswith(".json"):
            dso["grid"] = str((Path(path).parent / dso["grid"]).resolve())
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {msg}" if where else msg)
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise ScenarioError(f"scenario {path}: " + "; ".join(problems) + more) from None
    if grids and (problem := grid_problem(scenario)):
        raise ScenarioError(f"scenario {path}: {problem}")
    return scenario


def grid_problem(scenario: Scenario) -> str | None:
    """The first reference of the scenario its grids do not have (the grid itself, the interface, the
    elements of conditions, redispatch and faults, the DN assets' connection buses), or None."""
    from tsodso.actors import grid

    for i, dso in enumerate(scenario.dsos):
        try:
            net = grid.build(dso.grid)
        except grid.GridError as exc:
            return f"dsos.{i}.grid: {exc}"
        checks: list[tuple[str, str, tuple[str, ...]]] = [(f"dsos.{i}.interface", dso.interface, ("trafo", "line"))]
        for key, tables in (
            ("conditions", ("sgen", "load")),
            ("redispatch", ("sgen", "load")),
            ("unforecast", ("sgen", "load")),
            ("faults", ("line", "trafo", "bus", "sgen", "load")),
        ):
            checks += [(f"dsos.{i}.{key}.{j}.element", c.element, tables) for j, c in enumerate(getattr(dso, key))]
        for where, ref, allowed in checks:
            if problem := grid.element_problem(net, ref, allowed):
                return f"{where} ({dso.id}): {problem}"
        for b, bsp in enumerate(scenario.bsps):
            for a, asset in enumerate(bsp.assets):
                if asset.dso_id == dso.id and (problem := grid.bus_problem(net, asset.connection_bus or "")):
                    return f"bsps.{b}.assets.{a}.connection_bus ({asset.asset_id} of {bsp.id}): {problem}"
    return None


def actor_in(scenario: Scenario, role: str, actor_id: str, path: str | Path) -> None:
    """ScenarioError unless ``role/actor_id`` is an actor of the scenario (naming the ones it has)."""
    ids = {
        "tso": [scenario.tso.id],
        "dso": [d.id for d in scenario.dsos],
        "bsp": [b.id for b in scenario.bsps],
        "mo": [scenario.market_operator],
    }.get(role, [])
    if actor_id not in ids:
        raise ScenarioError(f"scenario {path} has no {role} {actor_id!r}; its {role}s: {', '.join(ids) or 'none'}")


def dump_scenario(scenario: Scenario, path: Path) -> None:
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json"), sort_keys=False))
