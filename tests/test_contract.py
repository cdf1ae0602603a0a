"""The message contract: models, envelope, exported JSON Schema / AsyncAPI, `tsodso schemas`."""

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError
from typer.testing import CliRunner

from tsodso.gateway.arrival import encode
from tsodso.gateway.asyncapi import asyncapi_document
from tsodso.gateway.policy import DELIVERY_POLICY
from tsodso.schemas import MESSAGE_TYPES, Envelope, Party
from tsodso.schemas.examples import SAMPLES
from tsodso.schemas.export import message_schema
from tsodso.schemas.rights import default_rights
from tsodso.schemas.validate import InvalidMessage, validate_message
from tsodso.testbed.cli import app

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = ROOT / "contract"


def wire(body, sender="tso", recipient="dso", **env_overrides) -> dict:
    env = Envelope(
        message_id=uuid.uuid4(),
        type=body.type_name,
        schema_version="1.0",
        sender=Party(role=sender, id=f"{sender}1"),
        recipients=[Party(role=recipient, id=f"{recipient}1")],
        sequence=1,
        created_at=datetime.now(UTC),
    )
    doc = json.loads(encode(env, body))
    doc["envelope"].update(env_overrides)
    return doc


def test_every_message_type_has_a_sample_and_a_policy():
    assert {b.type_name for b, _, _ in SAMPLES} == set(MESSAGE_TYPES)
    assert set(DELIVERY_POLICY) == set(MESSAGE_TYPES)


@pytest.mark.parametrize("body,sender,recipient", SAMPLES, ids=[b.type_name for b, _, _ in SAMPLES])
def test_round_trip_and_json_schema(body, sender, recipient):
    doc = wire(body, sender, recipient)
    env, parsed = validate_message(json.dumps(doc).encode())
    assert parsed == body and env.type == body.type_name
    # the exported schema (what vendors read) accepts it, and rejects a body with an unknown field
    schema = message_schema(body.type_name)
    jsonschema.validate(doc, schema)
    doc["body"]["not_in_contract"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_every_field_is_described_and_every_quantity_has_a_unit():
    missing, unitless = [], []
    for type_name in MESSAGE_TYPES:
        schema = message_schema(type_name)
        for def_name, definition in schema["$defs"].items():
            for field, spec in definition.get("properties", {}).items():
                if not spec.get("description"):
                    missing.append(f"{def_name}.{field}")
                numeric = spec.get("type") in ("number",) or any(
                    s.get("type") == "number" for s in spec.get("anyOf", [])
                )
                if numeric and "x-unit" not in spec:
                    unitless.append(f"{def_name}.{field}")
    assert not unitless, f"numeric fields without a unit: {unitless}"
    assert not missing, f"fields without a description: {missing}"


def test_entsoe_codes_on_the_wire():
    bid = next(b for b, _, _ in SAMPLES if b.type_name == "energy_bid")
    doc = wire(bid, "bsp", "tso")
    assert doc["body"]["process"] == "A51" and doc["body"]["direction"] == "A01" and doc["body"]["unit"] == "MAW"
    sp = next(b for b, _, _ in SAMPLES if b.type_name == "delta_setpoint")
    assert wire(sp)["body"]["resolution"] == "PT4S"


def test_envelope_rejects_unknown_fields_and_naive_times():
    body = SAMPLES[0][0]
    with pytest.raises(InvalidMessage, match=r"envelope.priority: Extra inputs are not permitted"):
        validate_message(wire(body, "bsp", "tso", priority="high"))
    with pytest.raises(InvalidMessage, match=r"envelope.created_at"):
        validate_message(wire(body, "bsp", "tso", created_at="2026-11-23T10:00:00"))
    with pytest.raises(ValidationError):
        type(body).model_validate({**body.model_dump(), "extra": 1})


def test_exported_files_match_the_models(tmp_path):
    """The checked-in contract/ is what `tsodso schemas export contract` writes today."""
    result = CliRunner().invoke(app, ["schemas", "export", str(tmp_path)])
    assert result.exit_code == 0, result.output
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    kept = sorted(p.relative_to(CONTRACT) for p in CONTRACT.rglob("*") if p.is_file())
    assert fresh == kept, "run `tsodso schemas export contract` and commit the result"
    drifted = [str(p) for p in fresh if (tmp_path / p).read_text() != (CONTRACT / p).read_text()]
    assert not drifted, f"contract/ drifted from the models: {drifted}; run `tsodso schemas export contract`"


def test_asyncapi_document_has_bindings_from_the_policy_and_the_rights():
    doc = asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    assert set(doc["channels"]) == set(MESSAGE_TYPES)
    sends = {k for k, op in doc["operations"].items() if op["action"] == "send"}
    assert len(sends) == len(default_rights().allowed)
    # every row also seen from its recipients: what a BSP's developer subscribes to and handles
    bsp_receives = {k for k, op in doc["operations"].items() if op["action"] == "receive" and k.startswith("bsp_")}
    assert {
        "bsp_receives_delta_setpoint_from_tso",
        "bsp_receives_activation_limit_from_tso",
        "bsp_receives_offer_acceptance_from_tso",
        "bsp_receives_system_state_from_tso",
        "bsp_receives_actor_state_from_tso",
    } <= bsp_receives
    assert "bsp_receives_merit_order_list_from_tso" not in bsp_receives
    op = doc["operations"]["tso_sends_delta_setpoint_to_bsp"]
    assert op["bindings"]["mqtt"] == {"qos": 1, "retain": False, "bindingVersion": "0.2.0", "messageExpiryInterval": 4}
    assert doc["operations"]["tso_sends_merit_order_list_to_dso"]["reply"]["channel"] == {
        "$ref": "#/channels/mol_validation"
    }
    state = doc["operations"]["dso_sends_actor_state_to_all"]["bindings"]["mqtt"]
    assert state["retain"] is True and state["qos"] == 1
    assert "bsp_sends_merit_order_list_to_dso" not in doc["operations"]
    # channels resolve to the exported schema files
    for msg in doc["components"]["messages"].values():
        assert (CONTRACT / msg["payload"]["$ref"]).exists()
    assert yaml.safe_load((CONTRACT / "asyncapi.yaml").read_text()) == doc


def test_cli_validate(tmp_path):
    runner = CliRunner()
    good = tmp_path / "good.json"
    setpoint = next(b for b, _, _ in SAMPLES if b.type_name == "delta_setpoint")
    doc = wire(setpoint, "tso", "bsp")
    good.write_text(json.dumps(doc))
    result = runner.invoke(app, ["schemas", "validate", str(good), "--type", "delta_setpoint"])
    assert result.exit_code == 0 and "valid delta_setpoint from tso/tso1" in result.output

    result = runner.invoke(app, ["schemas", "validate", str(good), "--type", "telemetry"])
    assert result.exit_code == 1 and "expected 'telemetry', got 'delta_setpoint'" in result.output

    doc["body"]["delta_mw"] = "lots"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    result = runner.invoke(app, ["schemas", "validate", str(bad)])
    assert result.exit_code == 1
    assert "body.delta_mw: Input should be a valid number" in result.output

    (tmp_path / "junk.json").write_text("{not json")
    result = runner.invoke(app, ["schemas", "validate", str(tmp_path / "junk.json")])
    assert result.exit_code == 1 and "not UTF-8 JSON" in result.output


def test_every_example_in_the_contract_is_a_valid_message_of_its_type():
    from tsodso.schemas.validate import validate_message

    examples = sorted((CONTRACT / "examples").glob("*.json"))
    assert {p.stem for p in examples} == set(MESSAGE_TYPES)
    for path in examples:
        env, body = validate_message(path.read_bytes(), path.stem)
        assert env.type == body.type_name == path.stem


def test_a_bid_whose_asset_shares_do_not_add_up_is_not_a_valid_bid():
    """The DSO validates a bid's DERs by their shares: shares that do not add up to the quantity would
    have it check the wrong amount, so such a bid is refused on arrival, saying why."""
    from tsodso.schemas.validate import InvalidMessage, validate_message

    bid = next(b for b, _, _ in SAMPLES if b.type_name == "energy_bid")
    doc = wire(bid, "bsp", "tso")
    doc["body"]["assets"][0]["share_mw"] = 5.0  # 5 + 10 for a 20 MW bid
    with pytest.raises(InvalidMessage, match="the assets' share_mw add up to 15 MW, not its quantity_mw 20"):
        validate_message(json.dumps(doc), "energy_bid")
    doc["body"]["assets"][0]["share_mw"] = 10.0
    validate_message(json.dumps(doc), "energy_bid")
