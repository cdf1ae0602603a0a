"""ENTSO-E documents: a run's bids, merit order lists, validations, acceptances and activations
written as IEC 62325 documents and read back into the same contract messages (docs/esmp.md)."""

import asyncio
import re
import subprocess
import sys
import typing
import warnings
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tsodso.actors.config import BidConfig
from tsodso.gateway.exchange_log import kept_payloads
from tsodso.schemas.esmp import Coding, DocumentError, read_document
from tsodso.schemas.validate import validate_message
from tsodso.testbed.esmp import export_run, import_file, scenario_bids
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
REFERENCE = SCENARIOS / "nl-afrr-congestion.yaml"
NOT_IN_DOCUMENTS = {"mol_validation": {"computation_time_s"}}  # a measurement of the testbed, not a market fact


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The reference scenario in virtual time on the embedded broker."""
    out = tmp_path_factory.mktemp("esmp") / "run"
    summary = _virtual_run(REFERENCE, out)
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)
    return out


def _virtual_run(scenario: Path, out: Path) -> dict:
    from tsodso.broker import start_broker

    with start_broker("embedded", data_dir=out.parent / "broker") as running:
        return asyncio.run(run_scenario(load_scenario(scenario), running.url, out, virtual=True))


def _sent(run: Path) -> dict[str, list[dict]]:
    sent: dict[str, list[dict]] = {}
    for type_name, _, payload in kept_payloads(run / "exchange.sqlite"):
        _, body = validate_message(payload)
        dumped = body.model_dump()
        for name in NOT_IN_DOCUMENTS.get(type_name, ()):
            dumped.pop(name)
        sent.setdefault(type_name, []).append(dumped)
    return sent


def _read_back(written) -> dict[str, list[dict]]:
    """The bodies the documents stand for, each checked as a receiver checks it."""
    back: dict[str, list[dict]] = {}
    for w in written:
        _, messages = import_file(w.path, Coding())
        assert len(messages) == w.messages
        for message in messages:
            _, body = validate_message(message)
            dumped = body.model_dump()
            for name in NOT_IN_DOCUMENTS.get(body.type_name, ()):
                dumped.pop(name)
            back.setdefault(body.type_name, []).append(dumped)
    return back


def test_a_run_round_trips_through_entso_e_documents_without_loss(reference_run, tmp_path):
    written, skipped = export_run(reference_run, tmp_path, Coding())
    assert skipped == []
    kinds = {w.kind for w in written}
    assert kinds == {
        "ReserveBid_MarketDocument",
        "MeritOrderList_MarketDocument",
        "BidAvailability_MarketDocument",
        "ReserveAllocationResult_MarketDocument",
        "Activation_MarketDocument",
    }
    back = _read_back(written)
    sent = _sent(reference_run)
    assert set(back) == set(sent)
    for type_name in sent:
        assert back[type_name] == sent[type_name], type_name  # every field, every message, in order
    assert len(back["delta_setpoint"]) == 225
    limited = [r for v in back["mol_validation"] for r in v["results"] if r["status"] == "limited"]
    assert (
        limited and limited[0]["upper_bound_mw"] == 15.01 and limited[0]["limiting_element"] == "line:behind-coupling"
    )


def test_every_bsp_aggregator_and_dso_of_the_scheme_comparison_round_trips_too(tmp_path):
    run = tmp_path / "run"
    _virtual_run(SCENARIOS / "schemes-comparison.yaml", run)
    written, skipped = export_run(run, tmp_path / "docs", Coding())
    assert skipped == []

    def key(d: dict) -> str:
        return repr(sorted(d.items()))

    back = _read_back(written)
    sent = _sent(run)
    assert {len({b["bsp_id"] for b in sent["energy_bid"]}), len({v["dso_id"] for v in sent["mol_validation"]})} == {
        5,
        2,
    }
    for type_name in sent:  # documents group by BSP and ISP: the same messages, in another order
        assert sorted(back[type_name], key=key) == sorted(sent[type_name], key=key), type_name


def test_the_codes_the_documents_carry_are_entso_e_codes(reference_run, tmp_path):
    written, _ = export_run(reference_run, tmp_path, Coding())
    text = {w.kind: w.path.read_text() for w in written}
    bids = text["ReserveBid_MarketDocument"]
    assert "<type>A37</type>" in bids and "<process.processType>A51</process.processType>" in bids
    assert "<flowDirection.direction>A01</flowDirection.direction>" in bids
    assert "<flowDirection.direction>A02</flowDirection.direction>" in bids
    assert "<quantity_Measurement_Unit.name>MAW</quantity_Measurement_Unit.name>" in bids
    assert "<resolution>PT15M</resolution>" in bids
    # 20 MW at 2 MW/min: full activation in 10 minutes
    assert "<activation_ConstraintDuration.duration>PT600.0S</activation_ConstraintDuration.duration>" in bids
    assert "<resolution>PT4S</resolution>" in text["Activation_MarketDocument"]
    assert "<revisionNumber>2</revisionNumber>" in "".join(
        w.path.read_text() for w in written if w.kind == "MeritOrderList_MarketDocument"
    ), "the second iteration of the merit order list is its revision 2"
    # the DER park behind dso1 is located in dso1's domain, the plant in the TSO's area
    assert re.search(r"<connecting_Domain.mRID codingScheme=\"NNL\">dso1</connecting_Domain.mRID>", bids)


# --- the official schemas ---------------------------------------------------------------------

MODELS = {
    "ReserveBid_MarketDocument": ("iec62325_451_7_reservebiddocument_v7_4", "ReserveBidMarketDocument"),
    "MeritOrderList_MarketDocument": ("iec62325_451_7_moldocument_v7_3", "MeritOrderListMarketDocument"),
    "BidAvailability_MarketDocument": ("iec62325_451_n_bidavailabilitydocument_v1_1", "BidAvailabilityMarketDocument"),
    "ReserveAllocationResult_MarketDocument": (
        "iec62325_451_7_reserveallocationresult_v6_5",
        "ReserveAllocationResultMarketDocument",
    ),
    "Activation_MarketDocument": ("iec62325_451_7_activationdocument_v6_4", "ActivationMarketDocument"),
}


def _model(kind: str) -> type[BaseModel]:
    import importlib

    module, name = MODELS[kind]
    return getattr(importlib.import_module(f"entsoe.xml_models.{module}"), name)


def _submodel(annotation: typing.Any) -> type[BaseModel] | None:
    """The model an element's annotation names (``X``, ``None | X``, ``list[X]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _check_sequence(element, model: type[BaseModel], where: str) -> list[str]:
    """The XSD's rules the generated models keep in their fields' metadata, which the parser does
    not check: the order of the sequence, and the max lengths and patterns of values."""
    order = {}
    for index, (name, f) in enumerate(model.model_fields.items()):
        xml = getattr(f, "xsdata_metadata", None) or {}
        if xml.get("type", "Element") == "Element":
            order[xml.get("name", name)] = (index, f, xml)
    problems, last = [], -1
    for child in element:
        local = child.tag.split("}")[-1]
        if local not in order:
            problems.append(f"{where}: {local} is not in the schema")
            continue
        index, f, xml = order[local]
        if index < last:
            problems.append(f"{where}: {local} is out of the schema's order")
        last = index
        text = (child.text or "").strip()
        if "max_length" in xml and len(text) > xml["max_length"]:
            problems.append(f"{where}: {local} {text!r} is over {xml['max_length']} characters")
        if "pattern" in xml and not re.fullmatch(xml["pattern"], text):
            problems.append(f"{where}: {local} {text!r} does not match the schema's pattern")
        sub = _submodel(f.annotation)
        if sub is not None:
            problems += _check_sequence(child, sub, f"{where}/{local}")
    return problems


def test_every_document_parses_with_the_models_generated_from_the_official_xsds(reference_run, tmp_path):
    """No package ships ENTSO-E's XSD files; entsoe-apy ships pydantic models generated from them,
    which refuse an unknown element, a missing required one, or a code not in its code list."""
    from xml.etree import ElementTree as ET

    from xsdata.formats.dataclass.parsers.config import ParserConfig
    from xsdata_pydantic.bindings import XmlParser

    parser = XmlParser(
        config=ParserConfig(
            fail_on_unknown_properties=True, fail_on_unknown_attributes=True, fail_on_converter_warnings=True
        )
    )
    written, _ = export_run(reference_run, tmp_path, Coding())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for w in written:
            parser.parse(str(w.path), _model(w.kind))  # raises on what the schema refuses
            problems = _check_sequence(ET.parse(w.path).getroot(), _model(w.kind), w.path.name)
            assert problems == []
    # and the checks are real: an element out of order, a time with seconds where the schema has
    # minutes, and a direction outside the code list are each refused
    bids_text = next(w.path for w in written if w.kind == "ReserveBid_MarketDocument").read_text()
    swapped = bids_text.replace("<type>A37</type>", "").replace(
        "</createdDateTime>", "</createdDateTime><type>A37</type>", 1
    )
    seconds = bids_text.replace("<start>2026-11-23T10:00Z</start>", "<start>2026-11-23T10:00:00Z</start>", 1)
    model = _model("ReserveBid_MarketDocument")
    assert any("type is out of the schema's order" in p for p in _check_sequence(ET.fromstring(swapped), model, "d"))
    assert any("does not match the schema's pattern" in p for p in _check_sequence(ET.fromstring(seconds), model, "d"))
    bad = tmp_path / "bad.xml"
    bids = next(w.path for w in written if w.kind == "ReserveBid_MarketDocument")
    bad.write_text(bids.read_text().replace("<flowDirection.direction>A01", "<flowDirection.direction>A09"))
    with pytest.raises(Exception, match="DirectionTypeList"), warnings.catch_warnings():
        warnings.simplefilter("error")
        parser.parse(str(bad), _model("ReserveBid_MarketDocument"))


# --- a market party's own export -------------------------------------------------------------


def _foreign(written, kind: str) -> str:
    """A document as another system would write it: EIC codes, none of the testbed's complementary
    information (reason A95)."""
    text = next(w.path for w in written if w.kind == kind).read_text()
    text = re.sub(r"\s*<Reason>\s*<code>A95</code>\s*<text>[^<]*</text>\s*</Reason>", "", text)
    return text


def test_a_market_partys_bid_document_with_eic_codes_drives_a_scenarios_bids(reference_run, tmp_path):
    codes = {
        "bsp1": "10X1001A1001A39W",
        "tso": "10X1001A1001A361",
        "NL": "10YNL----------L",
        "dso1": "10YDSO1--------1",
    }
    coding = Coding(codes)
    written, _ = export_run(reference_run, tmp_path / "eic", coding)
    text = _foreign(written, "ReserveBid_MarketDocument")
    assert 'codingScheme="A01">10X1001A1001A39W<' in text and "A95" not in text
    document = read_document(text.encode(), coding)
    assert document.sender.id == "bsp1" and document.receiver.id == "tso"
    bids = scenario_bids(document.bodies)
    configs = [BidConfig.model_validate(b) for b in bids]  # what a scenario's bsps[].bids accepts
    scenario = yaml.safe_load(REFERENCE.read_text())
    assert [c.model_dump() for c in configs] == [
        BidConfig.model_validate({**b, "direction": b["direction"]}).model_dump() for b in scenario["bsps"][0]["bids"]
    ]
    # without the complementary information the reference output is the contract's default
    assert all(b.reference_mw == 0.0 for b in document.bodies)


# --- what is refused, and how --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda t: t.replace("<flowDirection.direction>A01", "<flowDirection.direction>A09"), "direction 'A09'"),
        (lambda t: t.replace("<quantity.quantity>10.0", "<quantity.quantity>-10.0", 1), "share_mw"),
        (lambda t: t.replace("<energy_Price.amount>85.0", "<energy_Price.amount>8e5x"), "'8e5x' is not a decimal"),
        (lambda t: t.replace("<energy_Price.amount>85.0", "<energy_Price.amount>NaN"), "not a finite number"),
        (
            lambda t: re.sub(
                r"<activation_ConstraintDuration.duration>[^<]*</activation_ConstraintDuration.duration>", "", t
            ),
            "ramp",
        ),
        (lambda t: t.replace("<type>A37</type>", "<type>A99</type>"), "expected A37"),
        (
            lambda t: t.replace(
                "<receiver_MarketParticipant.marketRole.type>A49", "<receiver_MarketParticipant.marketRole.type>A99"
            ),
            "A99",
        ),
        (
            lambda t: t.replace(">bsp1-up.plant<", ">BSP ONE<").replace(">bsp1-up<", ">BSP ONE<"),
            "'BSP ONE' is no contract id",
        ),
        (lambda t: "<!DOCTYPE x [<!ENTITY a 'b'>]>" + t.split("?>", 1)[1], "DTD"),
        (lambda t: t[: len(t) // 2], "not well-formed XML"),
    ],
)
def test_a_wrong_document_is_refused_naming_what_is_wrong(reference_run, tmp_path, change, expected):
    written, _ = export_run(reference_run, tmp_path, Coding())
    text = next(w.path for w in written if w.kind == "ReserveBid_MarketDocument").read_text()
    with pytest.raises(DocumentError, match=re.escape(expected)):
        read_document(change(text).encode())


def test_an_oversized_document_is_refused_before_it_is_parsed():
    with pytest.raises(DocumentError, match="over the"):
        read_document(b"<a>" + b" " * (17 * 1024 * 1024) + b"</a>")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsodso", "esmp", *args], capture_output=True, text=True, timeout=120)


def test_the_cli_exports_and_imports_and_says_each_mistake_in_one_line(reference_run, tmp_path):
    out = tmp_path / "docs"
    done = _cli("export", str(reference_run), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "Activation_MarketDocument" in done.stdout and len(list(out.glob("*.xml"))) == 7
    bids = next(out.glob("bids_*.xml"))
    done = _cli("import", str(bids))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all(validate_message(line)[1].type_name == "energy_bid" for line in lines)
    assert "valid under the contract" in done.stderr
    done = _cli("import", str(bids), "--scenario-bids")
    assert yaml.safe_load(done.stdout)["bids"][0]["assets"] == {"plant": 10.0, "der-park": 10.0}

    garbage = tmp_path / "garbage.xml"
    garbage.write_text("not xml")
    codes = tmp_path / "codes.yaml"
    codes.write_text("bsp1: 10X1001A1001A39WTOOLONG\n")
    broken = tmp_path / "broken-run"
    broken.mkdir()
    (broken / "exchange.sqlite").write_text("not a database")
    for args, expected in [
        (("export", str(tmp_path / "nowhere")), "is not a run directory"),
        (("export", str(broken)), "no tso.area"),
        (("export", str(broken), "--area", "NL"), "not a readable exchange log"),
        (("import", str(tmp_path / "missing.xml")), "cannot read it"),
        (("import", str(garbage)), "not well-formed XML"),
        (("import", str(next(out.glob("mol_*.xml"))), "--scenario-bids"), "not bids"),
        (
            ("export", str(reference_run), "--codes", str(codes), "--out", str(tmp_path / "x")),
            "code for bsp1 is too long",
        ),
        (("export", str(reference_run), "--coding-scheme", "nl"), "not a coding scheme"),
    ]:
        done = _cli(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert expected in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_a_bid_document_drives_a_scenarios_bids(reference_run, tmp_path):
    """`tsodso run --bids FILE`: a BSP's bid document replaces its bids in the scenario; a cheaper
    energy price is what the run pays, the DSO's limit and the grid are the reference's."""
    written, _ = export_run(reference_run, tmp_path / "docs", Coding())
    bids = next(w.path for w in written if w.kind == "ReserveBid_MarketDocument")
    cheaper = tmp_path / "cheaper.xml"
    cheaper.write_text(bids.read_text().replace("<energy_Price.amount>85.0<", "<energy_Price.amount>60.0<"))
    run = [sys.executable, "-m", "tsodso", "run", str(REFERENCE), "--virtual", "--json"]
    done = subprocess.run(
        [*run, "--bids", str(cheaper), "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    summary = yaml.safe_load(done.stdout)
    reference = yaml.safe_load((reference_run / "summary.json").read_text())
    assert summary["dso_limits_mw"] == reference["dso_limits_mw"] and summary["congestion_seconds"] == 0
    cost, before = summary["schemes"]["total_cost_eur"], reference["schemes"]["total_cost_eur"]
    assert cost == pytest.approx(before * 60 / 85, rel=0.01)  # the up bid's energy, paid as bid
    mol = next(w.path for w in written if w.kind == "MeritOrderList_MarketDocument")
    done = subprocess.run(
        [*run, "--bids", str(mol), "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode != 0 and "not a ReserveBid_MarketDocument" in done.stderr and "Traceback" not in done.stderr
