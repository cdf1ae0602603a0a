"""The TSO's decisions on its core alone (actors.tso_core): no broker, no clock, no await. Each rule of
the papers the TSO applies, driven the way the agent drives it."""

from datetime import UTC, datetime, timedelta

import pytest

from tsodso.actors.bsp import bid_assets
from tsodso.actors.tso_core import TsoCore
from tsodso.schemas import Party
from tsodso.schemas.codes import BidStatus, Direction, ProcessType
from tsodso.schemas.messages import (
    ActivationLimit,
    BidValidation,
    DeltaSetpoint,
    EnergyBid,
    MolValidation,
    MonitoringReport,
    OfferAcceptance,
    SettlementReport,
    Telemetry,
    TerminationSignal,
)
from tsodso.testbed.scenario import load_scenario

SCENARIO = "scenarios/nl-afrr-congestion.yaml"
ISP = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
BSP, DSO = Party(role="bsp", id="bsp1"), Party(role="dso", id="dso1")
BEFORE = ISP - timedelta(seconds=30)


def _core(coordination: str = "hybrid", **tso) -> TsoCore:
    scenario = load_scenario(SCENARIO, coordination=coordination)
    if tso:
        scenario = scenario.model_copy(update={"tso": scenario.tso.model_copy(update=tso)})
    core = TsoCore(scenario, scenario.tso, "tso")
    core.qualified["bsp1"] = {"plant", "der-park"}
    return core


def _bid(core: TsoCore, bid_id: str = "bsp1-up", isp: datetime = ISP) -> EnergyBid:
    cfg = core.scenario.bsps[0]
    bid = next(b for b in cfg.bids if b.bid_id == bid_id)
    return EnergyBid(
        bid_id=bid.bid_id,
        bsp_id="bsp1",
        process=ProcessType.AFRR,
        direction=bid.code,
        isp_start=isp,
        quantity_mw=bid.quantity_mw,
        price_eur_per_mwh=bid.price_eur_per_mwh,
        reference_mw=cfg.reference_mw,
        ramp_rate_mw_per_min=bid.ramp_rate_mw_per_min,
        assets=bid_assets(bid, {a.asset_id: a for a in cfg.assets}),
    )


def _validation(bound_mw: float, iteration: int = 1) -> MolValidation:
    status = BidStatus.LIMITED if bound_mw < 20 else BidStatus.ACCEPTED
    result = BidValidation(bid_id="bsp1-up", status=status, upper_bound_mw=bound_mw, limiting_element="line:x")
    return MolValidation(mol_id="mol-202611231000", iteration=iteration, dso_id="dso1", results=[result])


def _open(core: TsoCore, bound_mw: float | None = 15.0):
    """Bids for the ISP, the list opened, validated by dso1 (to ``bound_mw``) and cleared."""
    for b in ("bsp1-up", "bsp1-down"):
        assert core.take_bid(_bid(core, b), BSP, BEFORE) is None
    entries = core.open_isp(ISP)
    if bound_mw is not None:
        core.take_validation("dso1", 1, _validation(bound_mw), entries, 1.0)
    return entries, core.clear(ISP, entries, [])


def _run(core: TsoCore, start: datetime, end: datetime) -> dict[datetime, float]:
    """The setpoint to bsp1 at each cycle instant from ``start`` to ``end``."""
    out = {}
    k, t = 0, core.scenario.start
    while t < end:
        core.enter(t)
        for m in core.cycle(k, t, 4.0):
            if isinstance(m.body, DeltaSetpoint) and t >= start:
                out[t] = m.body.delta_mw
        k, t = k + 1, t + timedelta(seconds=4)
    return out


def test_the_setpoint_rises_1_mw_every_30_s_from_10_01_and_holds_at_the_validated_bound():
    core = _core()
    _open(core)
    sp = _run(core, ISP, ISP + timedelta(minutes=15))
    at = lambda m, s=0: sp[ISP + timedelta(minutes=m, seconds=s)]  # noqa: E731
    assert at(0) == 0.0 and at(0, 56) == 0.0  # LFC reacts after the activation delay
    assert at(1) == 1.0 and at(1, 28) == 1.0 and at(1, 32) == 2.0  # one ramp step per 30 s at 2 MW/min
    assert at(5, 32) == 10.0 and at(7) == 10.0  # the 10 MW need reached and held
    assert max(sp.values()) == 15.0  # the 22 MW need from 10:07 is capped at the DSO's bound
    assert all(b - a <= 1.0 + 1e-9 for a, b in zip(sp.values(), list(sp.values())[1:]))


def test_the_list_goes_round_again_while_the_dso_changes_a_bound_and_stops_when_it_does_not():
    core = _core()
    for b in ("bsp1-up", "bsp1-down"):
        core.take_bid(_bid(core, b), BSP, BEFORE)
    entries = core.open_isp(ISP)
    mol = core.mol_for("dso1", ISP, 1, entries)
    assert mol is not None and {e.bid_id for e in mol.bids} == {"bsp1-up", "bsp1-down"}
    assert core.take_validation("dso1", 1, _validation(15.0), entries, 1.0) is True
    assert entries["bsp1-up"].upper_bound_mw == 15.0 and core.dso_limits_mw == {"bsp1-up": 15.0}
    assert core.take_validation("dso1", 2, _validation(15.0, 2), entries, 1.0) is False
    assert core.mol_for("dso2", ISP, 1, entries) is None  # nothing in dso2's grid: nothing to ask


@pytest.mark.parametrize(("fallback", "kept"), [("exclude_dn", set()), ("unvalidated", {"bsp1-up", "bsp1-down"})])
def test_a_silent_dso_triggers_the_scenarios_fallback(fallback, kept):
    core = _core(mol_fallback=fallback)
    for b in ("bsp1-up", "bsp1-down"):
        core.take_bid(_bid(core, b), BSP, BEFORE)
    entries = core.open_isp(ISP)
    mol = core.mol_for("dso1", ISP, 1, entries)
    assert mol is not None
    core.validation_missed("dso1", mol, entries)
    assert set(entries) == kept and core.fallbacks == [f"dso1:mol-202611231000:{fallback}"]


def test_gate_closure_and_the_scheme_decide_which_bids_the_tso_takes():
    core = _core()
    assert "after its gate closure" in (core.take_bid(_bid(core), BSP, ISP + timedelta(seconds=1)) or "")
    assert "a BSP bids for itself" in (core.take_bid(_bid(core), Party(role="bsp", id="other"), BEFORE) or "")
    core.qualified["bsp1"] = {"plant"}
    assert "not prequalified: der-park" in (core.take_bid(_bid(core), BSP, BEFORE) or "")
    fragmented = _core("fragmented")
    assert "does not reach DERs" in (fragmented.take_bid(_bid(fragmented), BSP, BEFORE) or "")
    assert core.bids == {} and fragmented.bids == {}


def test_offers_are_accepted_within_the_validated_bound():
    core = _core()
    _, sent = _open(core)
    acceptance = next(m.body for m in sent if isinstance(m.body, OfferAcceptance))
    assert {o.bid_id: o.upper_bound_mw for o in acceptance.accepted} == {"bsp1-up": 15.0, "bsp1-down": 20.0}
    assert all(m.correlation_id == core.conversation for m in sent)


def _deliver(core: TsoCore, share: float, cycles: int) -> list[MonitoringReport]:
    """Cycles from the run's start, bsp1 delivering ``share`` of each setpoint, in the order of a run:
    the telemetry of cycle k (the output just before setpoint k) arrives after setpoint k went out;
    the run's end comes a period after the last cycle. The reports sent."""
    reports = []
    k, t = 0, core.scenario.start
    last = 0.0
    for _ in range(cycles):
        core.enter(t)
        sent = core.cycle(k, t, 4.0)
        delivered = round(last * share, 6)
        for m in sent:
            if isinstance(m.body, DeltaSetpoint):
                last = m.body.delta_mw
        core.take_telemetry(
            Telemetry(source_id="bsp1", instant=t, cycle=k, delivered_delta_mw=delivered, measurements=[]), BSP
        )
        reports += [m.body for m in sent if isinstance(m.body, MonitoringReport)]
        k, t = k + 1, t + timedelta(seconds=4)
    reports += [m.body for m in core.finish() if isinstance(m.body, MonitoringReport)]
    return reports


@pytest.mark.parametrize(("share", "compliant"), [(1.0, True), (0.91, True), (1.19, True), (0.85, False)])
def test_delivery_is_judged_against_the_band_every_5_minutes(share, compliant):
    core = _core()
    _open(core)
    reports = _deliver(core, share, 4 * 75)  # 20 minutes of 4-s cycles from 09:59
    assert [r.period_end.strftime("%H:%M:%S") for r in reports] == ["10:03:56", "10:08:56", "10:13:56", "10:18:56"]
    steady = reports[2]  # 10:04-10:09: the setpoint ramps to 10 MW and holds, then to 15 MW
    assert steady.compliant is compliant
    assert (steady.within_tolerance_ratio == 1.0) is compliant


def test_every_cycle_is_judged_once_including_the_last_period_and_the_cycles_after_it():
    """A faithful BSP is judged within the band in every period: the last cycle of a period is judged
    when its telemetry is in, and the cycles after the last full period at the run's end."""
    core = _core()
    _open(core)
    reports = _deliver(core, 1.0, 240)  # the reference run: 09:59-10:15, three full periods and one minute
    assert [(r.period_start.strftime("%H:%M:%S"), r.period_end.strftime("%H:%M:%S")) for r in reports] == [
        ("09:59:00", "10:03:56"),
        ("10:04:00", "10:08:56"),
        ("10:09:00", "10:13:56"),
        ("10:14:00", "10:14:56"),
    ]
    assert [r.within_tolerance_ratio for r in reports] == [1.0] * 4
    assert all(r.compliant for r in reports)
    requested = sum(abs(v) for v in core.records["bsp1"].setpoints.values()) * 4 / 3600
    judged = sum(r.requested_energy_mwh for r in reports)  # setpoint k-1 is judged at cycle k
    last_setpoint = abs(core.records["bsp1"].setpoints[239]) * 4 / 3600
    assert judged == pytest.approx(requested - last_setpoint, abs=1e-5)


def test_a_dsos_limit_becomes_an_activation_limit_to_the_bsp_and_only_from_the_dso_of_the_grid():
    core = _core()
    _open(core)
    _run(core, ISP, ISP + timedelta(minutes=4))
    sig = TerminationSignal(dso_id="dso1", bid_id="bsp1-up", action="limit", max_mw=1.5, reason="line:x at 104 %")
    refusal, _ = core.take_termination(
        sig.model_copy(update={"dso_id": "dso2"}), Party(role="dso", id="dso2"), ISP, None, _id()
    )
    assert refusal == "dso/dso2 may not limit bsp1-up: its DN assets are in the grid of dso1"
    refusal, out = core.take_termination(sig, DSO, ISP + timedelta(minutes=4), None, _id())
    assert refusal is None and len(out) == 1 and isinstance(out[0].body, ActivationLimit) and out[0].to == BSP
    assert out[0].body.max_mw == 1.5 and core.active["bsp1-up"].activated_mw == 1.5
    after = _run_from(core, ISP + timedelta(minutes=4), 10)
    assert max(after) == 1.5  # the setpoint never goes above the limit again


def _id():
    import uuid

    return uuid.uuid4()


def _run_from(core: TsoCore, t: datetime, cycles: int) -> list[float]:
    k = int((t - core.scenario.start).total_seconds() // 4)
    out = []
    for _ in range(cycles):
        core.enter(t)
        out += [m.body.delta_mw for m in core.cycle(k, t, 4.0) if isinstance(m.body, DeltaSetpoint)]
        k, t = k + 1, t + timedelta(seconds=4)
    return out


def test_settlement_pays_the_activated_energy_at_the_bid_price_per_isp():
    core = _core()
    _open(core)
    _run(core, ISP, ISP + timedelta(minutes=15))
    ended, build = core.enter(ISP + timedelta(minutes=15))
    assert ended == ISP and build is True
    (report,) = [m.body for m in core.settlement(ended)]
    assert isinstance(report, SettlementReport) and report.bsp_id == "bsp1"
    (line,) = [x for x in report.lines if x.direction == Direction.UP]
    assert line.activated_energy_mwh == pytest.approx(core.active["bsp1-up"].energy_mwh, abs=1e-6)
    assert line.amount_eur == pytest.approx(line.activated_energy_mwh * 85, abs=0.01)


def test_prequalification_refuses_a_dso_the_tso_does_not_have_at_once_and_names_it():
    """A DN asset naming an unknown DSO is not forwarded to wait for an answer that cannot come: it is
    refused in the TSO's verdict, naming the DSO and the ones there are; the run's notes repeat it."""
    from tsodso.actors.bsp_core import asset_data
    from tsodso.schemas.messages import PrequalificationRequest

    core = _core()
    cfg = core.scenario.bsps[0]
    der = next(a for a in cfg.assets if a.asset_id == "der-park")
    assets = [asset_data(a) for a in cfg.assets]
    assets = [a.model_copy(update={"dso_id": "dso9"}) if a.asset_id == der.asset_id else a for a in assets]
    verdicts, forwards = core.prequalify(PrequalificationRequest(bsp_id="bsp1", assets=assets))
    assert forwards == {}  # nothing to wait for
    refused = next(v for v in verdicts if v.asset_id == "der-park")
    assert not refused.qualified
    assert refused.reason == "DSO 'dso9' is not a DSO of this TSO's area (its DSOs: dso1)"
    core.qualify("bsp1", verdicts)
    assert core.results()["refusals"] == [
        "asset der-park of bsp1 not prequalified by tso: DSO 'dso9' is not a DSO of this TSO's area (its DSOs: dso1)"
    ]
