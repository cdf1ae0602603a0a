"""Every mistake a scenario author can make is refused before anything starts, in one line that
names the key, the culprit and what would be valid (the README's own grid section relies on it)."""

from pathlib import Path

import pytest

from tsodso.testbed.scenario import ScenarioError, load_scenario

REFERENCE = Path(__file__).resolve().parents[1] / "scenarios" / "nl-afrr-congestion.yaml"


def _with(tmp_path: Path, old: str, new: str) -> Path:
    text = REFERENCE.read_text()
    assert old in text, old
    path = tmp_path / "mistake.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        (
            "assets: {plant: 10, der-park: 10}}",
            "assets: {plant: 10, der-park: 5}}",
            "bsps.0.bids.0: bid 'bsp1-up': the asset shares (plant 10 + der-park 5 = 15 MW) must add up to quantity_mw 20",
        ),
        (
            "assets: {plant: 10, der-park: 10}}",
            "assets: {plant: 10, der-prk: 10}}",
            "bid 'bsp1-up' names asset 'der-prk'; bsp1's assets: plant, der-park",
        ),
        (
            "connection_bus: der-park, capacity_up_mw: 10,",
            "connection_bus: der-park, capacity_up_mw: 5,",
            "bid 'bsp1-up' asks 10 MW up of asset 'der-park', whose capacity_up_mw is 5",
        ),
        (
            "dso_id: dso1, connection_bus",
            "dso_id: dso9, connection_bus",
            "asset 'der-park' of bsp1 names dso_id 'dso9'; the scenario's DSOs: dso1",
        ),
        (
            "connection: DN, dso_id: dso1, connection_bus: der-park,",
            "connection: DN,",
            "asset 'der-park' is connected to a DN: give its dso_id and connection_bus",
        ),
        (
            "connection_bus: der-park",
            "connection_bus: der-prk",
            "bsps.0.assets.1.connection_bus (der-park of bsp1): bus 'der-prk' is not in grid 'nl-afrr-congestion'; "
            "its buses: hv, mv-main, north-hub, der-park",
        ),
        (
            'element: "sgen:chp"',
            'element: "sgen:chpp"',
            "dsos.0.redispatch.1.element (dso1): sgen 'chpp' is not in grid 'nl-afrr-congestion'; its sgens: chp, pv-park",
        ),
        (
            'element: "line:south-pv"',
            'element: "south-pv"',
            "dsos.0.faults.0.element (dso1): 'south-pv' is not 'table:name' with table one of line, trafo",
        ),
        (
            "interface: trafo:coupling",
            "interface: trafo:couplin",
            "dsos.0.interface (dso1): trafo 'couplin' is not in grid 'nl-afrr-congestion'; its trafos: coupling",
        ),
        (
            "grid: nl_afrr_congestion",
            "grid: nl_afrr_congstion",
            "dsos.0.grid: unknown grid 'nl_afrr_congstion'; use a builder (nl_afrr_congestion, rural_village), "
            "simbench:<code> or a pandapower JSON file (*.json)",
        ),
        ("grid: nl_afrr_congestion", "grid: my-feeder.json", "dsos.0.grid: grid '"),
        ("curtail_dso: dso1", "curtail_dso: dso2", "emergency at 10:13:00 curtails 'dso2'; the DSOs: dso1"),
        ("end: 2026-11-23T10:15:00Z", "end: 2026-11-23T09:15:00Z", "end 2026-11-23T09:15:00Z must be after start"),
        ("  - id: bsp1", "  - id: dso1", "every actor needs its own id: dso1 used twice"),
        ("setpoint_period_s: 4", "setpoint_perod_s: 4", "setpoint_perod_s: Extra inputs are not permitted"),
        ("  mol_timeout_s: 2", "  mol_timeout_s: two", "tso.mol_timeout_s: Input should be a valid number"),
        ("coordination: true", "coordination: [true", "not readable YAML"),
    ],
)
def test_a_scenario_mistake_is_refused_in_one_line_naming_it(tmp_path, old, new, line):
    with pytest.raises(ScenarioError) as refused:
        load_scenario(_with(tmp_path, old, new))
    message = str(refused.value)
    assert "\n" not in message and line in message, message


def test_a_grid_file_next_to_the_scenario_is_the_dsos_grid(tmp_path):
    """A pandapower JSON net, named relative to the scenario file, is the DSO's grid; a file that is
    not a net is refused naming it."""
    import pandapower as pp

    from tsodso.actors.grid import build

    pp.to_json(build("nl_afrr_congestion"), str(tmp_path / "my-feeder.json"))
    scenario = load_scenario(_with(tmp_path, "grid: nl_afrr_congestion", "grid: my-feeder.json"))
    assert scenario.dsos[0].grid == str((tmp_path / "my-feeder.json").resolve())
    assert list(build(scenario.dsos[0].grid).trafo.name) == ["coupling"]
    (tmp_path / "my-feeder.json").write_text("{}")
    with pytest.raises(ScenarioError, match=r"my-feeder.json': not a pandapower JSON net"):
        load_scenario(tmp_path / "mistake.yaml")


def test_the_scenario_reference_and_schema_are_current_and_the_shipped_scenarios_validate():
    """docs/scenario.md and contract/scenario.schema.json are what the models say today, and every
    shipped scenario validates against the schema an editor would use."""
    import json

    import jsonschema
    import yaml

    from tsodso.testbed.scenario_reference import scenario_json_schema, scenario_reference

    root = REFERENCE.parents[1]
    assert (root / "docs" / "scenario.md").read_text() == scenario_reference(), "run `make contract`"
    schema = json.loads((root / "contract" / "scenario.schema.json").read_text())
    assert schema == scenario_json_schema(), "run `make contract`"
    for path in sorted((root / "scenarios").glob("*.yaml")):
        data = json.loads(json.dumps(yaml.safe_load(path.read_text()), default=lambda t: t.isoformat()))
        jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(data)
    data["bsps"][0]["bids"][0]["direction"] = "sideways"
    with pytest.raises(jsonschema.ValidationError, match="'sideways' is not one of"):
        jsonschema.validate(data, schema)
