"""The session scripts: the testbed plays every other role against the device under test.

On a broker with access lists the suite's TSO account cannot read what the device sends to others
(a BSP's telemetry to its DSO); pass an observer account (``broker.acl``'s ``observer``, read on
``tsodso/v1/#``) for the recorder.

The suite talks to the device through a :class:`~gateway.Gateway` (as the TSO) and watches
everything the device publishes through a plain MQTT :class:`~testbed.capture.Recorder`, so the
checks (``testbed.conformance.checks``) judge the bytes the device really sent. A session returns a
:class:`Trace`: the device's messages, the requests the suite sent (:class:`Probe`), the setpoints
and limits with their cycles, and why the session stopped early, if it did.
"""

import asyncio
import contextlib
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from nacl.signing import VerifyKey

from tsodso.actors import rules
from tsodso.actors.bsp import asset_data, bid_assets
from tsodso.actors.config import Scenario
from tsodso.actors.rules import ISP, isp_of
from tsodso.gateway import BrokerSpec, Gateway, Received
from tsodso.schemas.codes import BidStatus, Connection, Direction, ProcessType, SystemState
from tsodso.schemas.envelope import Envelope, Party
from tsodso.schemas.messages import (
    AcceptedOffer,
    ActivationLimit,
    AssetData,
    AssetVerdict,
    BidAsset,
    BidValidation,
    Body,
    CurtailmentRequest,
    CurtailmentResponse,
    DeltaSetpoint,
    EnergyBid,
    FlexActivation,
    FlexibilityNeed,
    Heartbeat,
    MeritOrderList,
    MolEntry,
    MolValidation,
    OfferAcceptance,
    PrequalificationForward,
    PrequalificationRequest,
    PrequalificationResult,
    Rejection,
    SystemStateNotice,
    TerminationSignal,
)
from tsodso.schemas.topics import PREFIX, topic_for
from tsodso.testbed.capture import Captured, Recorder
from tsodso.testbed.clock import Clock
from tsodso.testbed.standalone import LEAD_S, RUN_START, is_run_start, run_wall_start

BLOCK_MW = 1.0  # the BSP session's block activation: this, or a quarter of the bid if smaller
BLOCK_WAIT_S = 5.0  # [s, wall] longest wait for a second bid to block, and for the block to pass the broker

SESSION_SCRIPTS = {
    "bsp": """
Session script (the suite plays the TSO of `--scenario`, id `tso` in the reference scenario):

1. The device is connected; the suite waits for its retained `actor_state` 'online'.
2. The suite publishes a retained `system_state` (state normal, reason 'run start') to the device. Its
   `since` is the session's scenario start T0, one minute before an ISP boundary (ISP0); scenario
   time runs from 1 s after the message's `created_at` (at `--speed`, default 1). A run start
   created before the device connected is stale and must be ignored.
3. The device sends a `prequalification_request`; the suite qualifies every asset as asked. The
   device sends its `day_ahead` schedule and `energy_bid`s for ISP0 (and later ISPs, if it likes).
4. At ISP0, as the market operator `mo/conformance`, the suite activates another of the device's bids
   for ISP0 (its first one besides the bid activated below) as a block (`flex_activation`) of
   min(1 MW, quantity / 4) for the whole ISP: the device's output moves by that much on top of the
   aFRR activation. Then the suite accepts the device's bids for ISP0 (`offer_acceptance`) and activates its
   cheapest upward bid with a `delta_setpoint` every 4 s: rising at the bid's declared ramp rate
   to A = min(quantity / 2, max(0.5 MW, ramp x 30 s)), holding; one setpoint that has already
   expired asks for the full quantity; an `activation_limit` to A / 2; later a limit of 0 MW
   (termination). The setpoint stays at A throughout: honouring the limits is the device's job.
   A heartbeat probe is sent in the third cycle.
""",
    "dso": """
Session script (the suite plays the TSO of `--scenario`; bids and assets come from that scenario,
its first DSO renamed to the device's id):

1. The device is connected; the suite waits for its retained `actor_state` 'online'.
2. The suite publishes the retained `system_state` 'run start' (as for a BSP) and waits for the
   device's interface forecast.
3. A `prequalification_forward` with the scenario's DN assets in the device's grid.
4. A `merit_order_list` for ISP0 with the scenario's bids plus one TN-only bid (not the device's
   business), with `reply_to`; then the same list again as iteration 2 (a TSO re-sends until the
   list is accepted).
5. A `curtailment_request` (alert, load, 3 MW, 600 s), then a heartbeat probe.
""",
}


Leave = tuple[float, Any]  # (seconds to wait for the device to go, callable run first or None)


@dataclass
class Probe:
    """A request the suite sent, and how to recognise its answer among the device's messages."""

    name: str
    envelope: Envelope
    body: Any  # the request's Body model (which one follows ``name``)
    sent_us: int
    answer_type: str
    within_s: float
    matches: Any = None  # Callable[[Captured], bool] | None: content match beyond type and sender

    def is_answer(self, msg: Captured) -> bool:
        env = msg.envelope
        return (
            msg.valid
            and env is not None
            and env.type == self.answer_type
            and self.envelope.sender in env.recipients
            and msg.t_us >= self.sent_us
            and (self.matches is None or self.matches(msg))
        )


@dataclass
class SetpointSent:
    cycle: int
    instant: datetime
    target_mw: float  # what the setpoint asked of the activated bid
    expired: bool  # sent with valid_until already passed
    envelope: Envelope
    sent_us: int


@dataclass
class Trace:
    """What happened in one session, for the checks."""

    role: str
    device: Party
    tso: Party
    broker: BrokerSpec
    speed: float
    period_s: float
    scenario: Scenario  # the session's scenario (a DSO session: its profile for the device)
    observer: BrokerSpec | None = None  # where the recorder connects (an observer account on an ACL broker)
    device_key: VerifyKey | None = None  # the device's Ed25519 public key (nacl VerifyKey), to verify its signatures
    messages: list[Captured] = field(default_factory=list)  # everything the device published, in order
    recording_since: float = field(
        default_factory=time.time
    )  # epoch s: older messages are the broker's retained copies
    probes: list[Probe] = field(default_factory=list)
    aborted: str | None = None  # why the session stopped before its script ended
    isp0: datetime | None = None
    birth_retained: bool | None = None  # the broker gave a new subscriber the device's birth as retained
    qos0_faithful: bool = True  # the broker delivers QoS 0 as QoS 0 to a QoS 1 subscriber (amqtt did not)
    watched_leaving: float | None = None  # how long the suite waited for the device to leave [s]
    left_at_us: int | None = None  # when the suite made the device leave (epoch µs)
    death_retained: bool | None = None  # the broker kept the device's 'offline' state retained
    run_start: datetime | None = None  # scenario time T0 of the session
    run_wall_origin: float = 0.0  # wall clock (epoch s) at which T0 happened
    prequal_assets: dict[str, AssetData] = field(default_factory=dict)  # asked in the device's request
    bids: list[Received[EnergyBid]] = field(default_factory=list)  # valid bids as the TSO got them
    activated: EnergyBid | None = None
    no_activation: str | None = None  # why no setpoints were sent
    block: tuple[FlexActivation, int] | None = None  # the block activation the suite sent, when (µs)
    no_block: str | None = None  # why none was sent
    setpoints: dict[int, SetpointSent] = field(default_factory=dict)
    limit_cycle: int | None = None
    limit_mw: float | None = None
    limit_check: range = range(0)  # telemetry cycles judged against the limit
    termination_cycle: int | None = None
    termination_check: range = range(0)
    hold_target_mw: float = 0.0
    rejections: list[Received[Rejection]] = field(default_factory=list)  # what the device refused
    mol: MeritOrderList | None = None
    # TSO sessions: what the suite's DSO and BSP saw and said
    forwards: list[Received[PrequalificationForward]] = field(default_factory=list)
    dso_verdicts: dict[str, AssetVerdict] = field(default_factory=dict)  # asset -> the suite DSO's verdict
    validated: dict[str, float] = field(default_factory=dict)  # bid -> upper bound the suite DSO validated
    termination: tuple[str, float, int] | None = None  # (bid, max MW, sent µs)
    # market-operator sessions: what the suite's BSPs offered and its parties needed
    market_bids: dict[str, EnergyBid] = field(default_factory=dict)
    market_needs: dict[str, tuple[Party, FlexibilityNeed]] = field(default_factory=dict)  # need id -> (buyer, need)

    @property
    def watch(self) -> BrokerSpec:
        """Where the recorder connects: the observer account, or the session's broker."""
        return self.observer or self.broker

    @property
    def first_isp(self) -> datetime:
        """ISP0, once the session has started (``isp0`` is None before)."""
        assert self.isp0 is not None, "the session has not started"
        return self.isp0

    @property
    def dn_dsos(self) -> set[str]:
        """DSOs of the device's DN assets (its telemetry goes there too)."""
        return {a.dso_id for a in self.prequal_assets.values() if a.connection == Connection.DN and a.dso_id}

    @property
    def valid(self) -> list[Captured]:
        return [m for m in self.messages if m.valid]

    def of_type(self, type_name: str, to_role: str | None = None) -> list[Captured]:
        return [
            m
            for m in self.valid
            if m.envelope.type == type_name
            and (to_role is None or any(r.role == to_role for r in m.envelope.recipients))
        ]

    def answer(self, probe: Probe) -> Captured | None:
        return next((m for m in self.messages if probe.is_answer(m)), None)

    def telemetry(self, to: Party) -> dict[int, Captured]:
        """Cycle -> the first valid telemetry of that cycle the device sent to ``to``."""
        out: dict[int, Captured] = {}
        for m in self.of_type("telemetry"):
            if to in m.envelope.recipients and m.body.cycle is not None:
                out.setdefault(m.body.cycle, m)
        return out

    def in_force(self, cycle: int) -> float | None:
        """The setpoint in force at ``cycle`` (an expired one does not count)."""
        for k in range(cycle, -1, -1):
            sp = self.setpoints.get(k)
            if sp is not None and not sp.expired:
                return sp.target_mw
        return None


def is_birth(device: Party):
    return lambda m: (
        m.valid and m.envelope.type == "actor_state" and m.envelope.sender == device and m.body.status == "online"
    )


async def retained_copy(broker: BrokerSpec, topic: str, timeout_s: float = 2.0) -> bool:
    """Does a new subscriber to ``topic`` get a retained copy? (On MQTT 3.1.1 a live message never shows
    its retain flag, so the birth's retention is checked this way.)"""
    async with Recorder(broker, [topic]) as rec:
        return await rec.wait_for(lambda m: m.retain, timeout_s) is not None


async def qos0_delivered_as_qos0(broker: BrokerSpec, gw: Gateway, timeout_s: float = 2.0) -> bool:
    """Publish one QoS 0 message to a QoS 1 subscriber: MQTT delivers it at QoS 0; some brokers (amqtt) upgrade it.
    When the broker upgrades, the QoS a device chose for QoS 0 types cannot be seen from outside."""
    topic = f"tsodso-conformance/{uuid.uuid4().hex}"
    async with Recorder(broker, [topic]) as rec:
        await gw.publish_bytes(topic, b"qos 0 calibration", qos=0)
        got = await rec.wait_for(lambda m: True, timeout_s)
    return got is None or got.qos == 0


class _Suite:
    """What both session scripts share: the TSO's gateway, the recorder, the run start, probes."""

    def __init__(self, trace: Trace, scenario: Scenario, timeout_s: float):
        self.trace = trace
        self.scenario = scenario
        self.timeout_s = timeout_s
        self.gw: Gateway
        self.rec: Recorder
        self.clock: Clock

    async def start(self) -> bool:
        t = self.trace
        if await self.rec.wait_for(is_birth(t.device), self.timeout_s) is None:
            t.aborted = (
                f"no retained actor_state 'online' from {t.device} within {self.timeout_s:g} s: is the "
                f"device connected to {t.broker.url}?"
            )
            return False
        birth = await self.rec.wait_for(is_birth(t.device), 0)
        assert birth is not None  # seen just above
        t.birth_retained = await retained_copy(t.watch, birth.topic)
        t.qos0_faithful = await qos0_delivered_as_qos0(t.watch, self.gw)
        t.isp0 = isp_of(datetime.now(UTC)) + 2 * ISP
        t0 = t.isp0 - timedelta(seconds=60)
        wall_start = datetime.now(UTC) + timedelta(seconds=LEAD_S)
        await self.gw.publish(
            SystemStateNotice(
                state=SystemState.NORMAL,
                area=self.scenario.tso.area,
                since=t0,
                reason=RUN_START,
                speed=t.speed,
                wall_start=wall_start,
            ),
            t.device,
        )
        self.clock = Clock(t0, t.speed, wall_origin=wall_start.timestamp())
        t.run_start, t.run_wall_origin = t0, self.clock.wall_origin
        return True

    async def probe(
        self, name: str, body: Body, answer_type: str, within_s: float, matches: Any = None, gw: Gateway | None = None
    ) -> Probe:
        gw = gw or self.gw
        msg_id = uuid.uuid4()
        env = await gw.publish(
            body,
            self.trace.device,
            reply_to=topic_for(self.trace.device, answer_type, gw.me),
            message_id=msg_id,
            correlation_id=msg_id,
        )
        probe = Probe(name, env, body, int(env.created_at.timestamp() * 1e6), answer_type, within_s, matches)
        self.trace.probes.append(probe)
        return probe

    async def answered(self, probe: Probe) -> Captured | None:
        start = next((i for i, m in enumerate(self.rec.messages) if m.t_us >= probe.sent_us), len(self.rec.messages))
        return await self.rec.wait_for(probe.is_answer, self.timeout_s, start)

    async def watch_leaving(self, leave: "Leave | None") -> None:
        """With ``leave`` = (how long to wait [s], what to call first): see the device go and whether the
        broker keeps its 'offline' state retained (BSP/DSO-PR-020)."""
        if leave is None:
            return
        wait_s, trigger = leave
        t = self.trace
        start = len(self.rec.messages)  # only what comes after the device is made to leave
        t.left_at_us = time.time_ns() // 1000
        if trigger is not None:
            result = trigger()
            if asyncio.iscoroutine(result):
                await result
        gone = await self.rec.wait_for(
            lambda m: (
                m.valid
                and m.envelope.type == "actor_state"
                and m.envelope.sender == t.device
                and m.body.status == "offline"
            ),
            wait_s,
            start,
        )
        t.watched_leaving = wait_s
        if gone is not None:
            t.death_retained = gone.retain or await retained_copy(t.watch, gone.topic)

    async def heartbeat_probe(self) -> Probe:
        return await self.probe("heartbeat", Heartbeat(sent_at=datetime.now(UTC), interval_s=1.0), "heartbeat", 1.0)


async def play_bsp(
    device_id: str,
    broker: BrokerSpec,
    scenario: Scenario,
    *,
    speed: float = 1.0,
    timeout_s: float = 20.0,
    leave: Leave | None = None,
    observer: BrokerSpec | None = None,
) -> Trace:
    device, tso = Party(role="bsp", id=device_id), Party(role="tso", id=scenario.tso.id)
    period = scenario.setpoint_period_s
    trace = Trace("bsp", device, tso, broker, speed, period, scenario)
    suite = _Suite(trace, scenario, timeout_s)
    trace.observer = observer or broker
    async with Recorder(trace.observer, [f"{PREFIX}/bsp/{device_id}/#"]) as rec, _gateway(tso, device, broker) as gw:
        suite.rec, suite.gw = rec, gw
        trace.messages = rec.messages

        @gw.on(PrequalificationRequest)
        async def prequalify(msg: Received[PrequalificationRequest]) -> None:
            if msg.sender != device:
                return
            trace.prequal_assets.update({a.asset_id: a for a in msg.body.assets})
            verdicts = [
                AssetVerdict(
                    asset_id=a.asset_id,
                    qualified=True,
                    validated_capacity_up_mw=a.capacity_up_mw,
                    validated_capacity_down_mw=a.capacity_down_mw,
                    checked_by="dso" if a.connection == Connection.DN else "tso",
                )
                for a in msg.body.assets
            ]
            await gw.reply(msg, PrequalificationResult(bsp_id=msg.body.bsp_id, verdicts=verdicts))

        @gw.on(EnergyBid)
        async def bid(msg: Received[EnergyBid]) -> None:
            if msg.sender == device:
                trace.bids.append(msg)

        _collect_rejections(gw, trace)

        _consume_inbox(gw)
        if not await suite.start():
            return trace
        clock = suite.clock
        await clock.sleep_until(trace.first_isp)
        ups: list[EnergyBid] = []
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not ups and asyncio.get_running_loop().time() < deadline:  # late bids still let the session go on
            ups = [b.body for b in trace.bids if b.body.isp_start == trace.isp0 and b.body.direction == Direction.UP]
            if not ups:
                await asyncio.sleep(0.05)
        if not ups:
            trace.no_activation = f"no upward energy_bid for ISP {trace.isp0:%H:%M} within {timeout_s:g} s of its start"
        else:
            activated = min(ups, key=lambda b: b.price_eur_per_mwh)
            await _block(suite, activated)
            await _activate(suite, activated)
        # one more period for the last telemetry, and the probes' answers
        await asyncio.sleep(clock.wall_seconds(period) + 0.3)
        await suite.watch_leaving(leave)
        await asyncio.sleep(0)
    return trace


BLOCK_BUYER = Party(role="mo", id="conformance")  # the market operator the suite plays for a block activation


async def _block(suite: _Suite, activated: EnergyBid) -> None:
    """A block activation of another of the device's bids for ISP0, as a market operator would send
    for a commercial party (integrated flexibility market, CS review Table I)."""
    trace = suite.trace
    deadline = asyncio.get_running_loop().time() + BLOCK_WAIT_S  # a device's bids arrive one after the other
    while True:
        others = [b.body for b in trace.bids if b.body.isp_start == trace.isp0 and b.body.bid_id != activated.bid_id]
        if others or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    if not others:
        trace.no_block = f"no bid for ISP {trace.isp0:%H:%M} besides the activated {activated.bid_id}"
        return
    bid = others[0]
    body = FlexActivation(
        activation_id=f"conformance-{uuid.uuid4().hex[:8]}",
        buyer_id="conformance",
        buyer_role="bsp",
        purpose="commercial",
        bid_id=bid.bid_id,
        bsp_id=bid.bsp_id,
        direction=bid.direction,
        isp_start=trace.first_isp,
        activated_mw=round(min(BLOCK_MW, bid.quantity_mw / 4), 6),
        price_eur_per_mwh=bid.price_eur_per_mwh,
        assets=bid.assets,
    )
    topic = topic_for(BLOCK_BUYER, body.type_name, trace.device)
    async with Recorder(trace.watch, [topic]) as rec, _gateway(BLOCK_BUYER, trace.device, trace.broker) as gw:
        env = await gw.publish(body, trace.device)
        passed = await rec.wait_for(lambda m: m.valid and m.envelope.message_id == env.message_id, BLOCK_WAIT_S)
    if passed is None:  # e.g. an access list that lets the suite's account speak only as the TSO
        trace.no_block = f"the broker did not pass the suite's block activation as {BLOCK_BUYER} on {topic}"
        return
    trace.block = (body, int(env.created_at.timestamp() * 1e6))


async def _activate(suite: _Suite, bid: EnergyBid) -> None:
    trace, gw, clock, device = suite.trace, suite.gw, suite.clock, suite.trace.device
    period = trace.period_s
    trace.activated = bid
    isp_bids = {b.body.bid_id: b.body for b in trace.bids if b.body.isp_start == trace.isp0}
    acceptance = await gw.publish(
        OfferAcceptance(
            isp_start=trace.first_isp,
            accepted=[
                AcceptedOffer(bid_id=b.bid_id, direction=b.direction, upper_bound_mw=b.quantity_mw)
                for b in isp_bids.values()
            ],
        ),
        device,
    )
    conversation = acceptance.message_id  # setpoints belong to the acceptance's conversation (as actors.tso)
    step = bid.ramp_rate_mw_per_min * period / 60  # MW per cycle at the declared ramp
    a = min(bid.quantity_mw / 2, max(rules.STEADY_MIN_MW, rules.ramp_step_mw(bid.ramp_rate_mw_per_min)))
    trace.hold_target_mw = a
    n_up = math.ceil(a / step - 1e-9)
    expired = n_up + 6
    limit = expired + 6
    limit_mw = a / 2
    settle_limit = math.ceil((a - limit_mw) / step - 1e-9) + 2
    termination = limit + settle_limit + 4
    settle_term = math.ceil(limit_mw / step - 1e-9) + 2
    end = termination + settle_term + 4
    trace.limit_cycle, trace.limit_mw, trace.termination_cycle = limit, limit_mw, termination
    trace.limit_check = range(limit + settle_limit, termination + 1)
    trace.termination_check = range(termination + settle_term, end + 1)
    # the next instant of the session's setpoint grid (T0 + k x period), as a TSO's cycles fall
    origin = trace.run_start or clock.now()
    first = origin + timedelta(seconds=period * (math.floor((clock.now() - origin).total_seconds() / period) + 1))
    wall_period = clock.wall_seconds(period)
    for k in range(end + 1):
        instant = first + timedelta(seconds=k * period)
        await clock.sleep_until(instant)
        if k in (limit, termination):
            await gw.publish(
                ActivationLimit(
                    bsp_id=device.id,
                    bid_id=bid.bid_id,
                    direction=bid.direction,
                    max_mw=limit_mw if k == limit else 0.0,
                    valid_from=instant,
                    reason="conformance: limit" if k == limit else "conformance: terminate",
                ),
                device,
            )
        target = min(a, step * (k + 1))
        is_expired = k == expired
        if is_expired:
            target = bid.quantity_mw
        body = DeltaSetpoint(
            bsp_id=device.id,
            cycle=k,
            instant=instant,
            reference_mw=bid.reference_mw,
            delta_mw=target,
            bid_deltas_mw={bid.bid_id: target},
        )
        if is_expired:  # built as if sent two periods ago: valid_until has passed on arrival
            env, payload = gw.build(body, device, valid_for_s=-2 * wall_period, correlation_id=conversation)
            await gw.publish_bytes(topic_for(gw.me, body.type_name, device), payload, qos=1)
        else:
            env = await gw.publish(body, device, valid_for_s=wall_period, correlation_id=conversation)
        trace.setpoints[k] = SetpointSent(k, instant, target, is_expired, env, gw.now_us())
        if k == 2:
            await suite.heartbeat_probe()


def _gateway(me: Party, device: Party, broker: BrokerSpec) -> Gateway:
    """The suite's gateway: its own MQTT client id, so sessions with several devices can run at once."""
    return Gateway(me, broker, client_id=f"{me.role}-{me.id}-conformance-{device.role}-{device.id}"[:128])


def dso_profile(scenario: Scenario, device_id: str) -> Scenario:
    """The scenario as the DSO ``device_id`` sees it: its first DSO renamed to the device's id (with
    the assets and bids that connect there)."""
    old = scenario.dsos[0].id
    data = scenario.model_dump(mode="json")
    data["dsos"] = [dict(data["dsos"][0], id=device_id)]
    for bsp in data["bsps"]:
        for asset in bsp["assets"]:
            if asset.get("dso_id") == old:
                asset["dso_id"] = device_id
    for emergency in data["tso"]["emergencies"]:
        if emergency.get("curtail_dso") == old:
            emergency["curtail_dso"] = device_id
    return Scenario.model_validate(data)


async def play_dso(
    device_id: str,
    broker: BrokerSpec,
    scenario: Scenario,
    *,
    speed: float = 1.0,
    timeout_s: float = 20.0,
    leave: Leave | None = None,
    observer: BrokerSpec | None = None,
) -> Trace:
    device, tso = Party(role="dso", id=device_id), Party(role="tso", id=scenario.tso.id)
    profile = dso_profile(scenario, device_id)
    trace = Trace("dso", device, tso, broker, speed, scenario.setpoint_period_s, profile)
    suite = _Suite(trace, profile, timeout_s)
    trace.observer = observer or broker
    async with Recorder(trace.observer, [f"{PREFIX}/dso/{device_id}/#"]) as rec, _gateway(tso, device, broker) as gw:
        suite.rec, suite.gw = rec, gw
        trace.messages = rec.messages

        _collect_rejections(gw, trace)

        _consume_inbox(gw)
        if not await suite.start():
            return trace
        await rec.wait_for(lambda m: m.type == "forecast", suite.timeout_s)
        assets = [
            asset_data(a)
            for b in profile.bsps
            for a in b.assets
            if a.connection == Connection.DN and a.dso_id == device_id
        ]
        if not assets:
            trace.aborted = f"the scenario has no DN asset in the grid of {device_id}: pass --scenario with one"
            return trace
        bsp_id = next(b.id for b in profile.bsps if any(a.dso_id == device_id for a in b.assets))
        p = await suite.probe(
            "prequalification",
            PrequalificationForward(bsp_id=bsp_id, dso_id=device_id, assets=assets),
            "prequalification_result",
            5.0,
        )
        await suite.answered(p)
        trace.mol = mol = _mol(profile, trace.first_isp)
        p = await suite.probe(
            "mol",
            mol,
            "mol_validation",
            2.0,
            lambda m: m.body.mol_id == mol.mol_id and m.body.iteration == mol.iteration,
        )
        await suite.answered(p)
        again = mol.model_copy(update={"iteration": 2})  # the TSO re-sends until the list is accepted
        p = await suite.probe(
            "mol-2", again, "mol_validation", 2.0, lambda m: m.body.mol_id == again.mol_id and m.body.iteration == 2
        )
        await suite.answered(p)
        p = await suite.probe(
            "curtailment",
            CurtailmentRequest(
                dso_id=device_id,
                target="load",
                amount_mw=3,
                start=suite.clock.now(),
                duration_s=600,
                state=SystemState.ALERT,
            ),
            "curtailment_response",
            5.0,
        )
        await suite.answered(p)
        p = await suite.heartbeat_probe()
        await suite.answered(p)
        await asyncio.sleep(0.3)
        await suite.watch_leaving(leave)
    return trace


def _collect_rejections(gw: Gateway, trace: Trace) -> None:
    """Keep what the device refused of the suite's messages (evidence for the checks)."""

    @gw.on(Rejection)
    async def rejected(msg: Received[Rejection]) -> None:
        if msg.sender == trace.device:
            trace.rejections.append(msg)


def _consume_inbox(gw: Gateway) -> None:
    """Take whatever no handler took (the checks judge the device from the recorder's copy)."""

    async def consume() -> None:
        async for _ in gw.messages():
            pass

    gw.spawn(consume())


def _mol(profile: Scenario, isp: datetime) -> MeritOrderList:
    entries: list[tuple[Direction, float, dict[str, Any]]] = []
    for b in profile.bsps:
        assets = {a.asset_id: a for a in b.assets}
        for bid in b.bids:
            entries.append(
                (
                    bid.code,
                    bid.price_eur_per_mwh,
                    dict(
                        bid_id=bid.bid_id,
                        bsp_id=b.id,
                        direction=bid.code,
                        price_eur_per_mwh=bid.price_eur_per_mwh,
                        quantity_mw=bid.quantity_mw,
                        upper_bound_mw=bid.quantity_mw,
                        assets=bid_assets(bid, assets),
                    ),
                )
            )
    entries.append(
        (
            Direction.UP,
            999.0,
            dict(
                bid_id="conformance-tn-up",
                bsp_id="conformance",
                direction=Direction.UP,
                price_eur_per_mwh=999.0,
                quantity_mw=5.0,
                upper_bound_mw=5.0,
                assets=[BidAsset(asset_id="conformance-tn", connection=Connection.TN, share_mw=5.0)],
            ),
        )
    )
    entries.sort(key=lambda e: (e[0], e[1]))
    out: list[MolEntry] = []
    rank: dict[Direction, int] = {}
    for direction, _, entry in entries:
        rank[direction] = rank.get(direction, 0) + 1
        out.append(MolEntry(rank=rank[direction], **entry))
    return MeritOrderList(
        mol_id=f"conformance-{uuid.uuid4().hex[:8]}", process=ProcessType.AFRR, isp_start=isp, iteration=1, bids=out
    )


TSO_SCRIPT = """
Session script (the suite plays the first DSO and the first BSP of `--scenario`, which must be the
scenario the TSO under test runs: same ids, times and bids):

1. The suite's DSO and BSP connect (their births). The TSO, seeing its peers online, publishes the
   retained `system_state` 'run start' to all/all (as `tsodso actor tso`); scenario time runs from
   1 s after its `created_at`.
2. The BSP sends a `prequalification_request` (the DSO qualifies DN assets at 80 % of the upward
   capacity asked), its day-ahead schedule and its bids, then follows every setpoint at once and
   reports telemetry.
3. The DSO validates every merit order list: bids in its grid limited to 60 % of their quantity.
   At 75 % of the run it sends a `termination_signal` (limit to 25 % of the quantity) for its most
   activated bid.
4. The session ends two setpoint periods after the scenario's end (the settlement comes then).
"""
SESSION_SCRIPTS["tso"] = TSO_SCRIPT
VALIDATED_SHARE = 0.6  # the suite DSO validates DN bids to this share of their quantity
QUALIFIED_SHARE = 0.8  # ... and qualifies DN assets for this share of their upward capacity
LIMIT_SHARE = 0.25  # ... and limits the most activated one to this share in real time


async def play_tso(
    device_id: str,
    broker: BrokerSpec,
    scenario: Scenario,
    *,
    speed: float = 1.0,
    timeout_s: float = 20.0,
    leave: Leave | None = None,
    observer: BrokerSpec | None = None,
) -> Trace:
    from tsodso.actors.bsp import (
        BSP,  # the suite's BSP is the testbed's own (imported here: the others need not)
    )

    device = Party(role="tso", id=device_id)
    scenario = scenario.model_copy(update={"tso": scenario.tso.model_copy(update={"id": device_id})})
    dso_cfg, bsp_cfg = scenario.dsos[0], scenario.bsps[0]
    dso, bsp = Party(role="dso", id=dso_cfg.id), Party(role="bsp", id=bsp_cfg.id)
    trace = Trace("tso", device, device, broker, speed, scenario.setpoint_period_s, scenario)
    trace.observer = observer or broker
    quantity = {b.bid_id: b.quantity_mw for b in bsp_cfg.bids}
    loop = asyncio.get_running_loop()
    started: asyncio.Future[tuple[datetime, float]] = loop.create_future()
    suite = _Suite(trace, scenario, timeout_s)
    gw_dso, gw_bsp = _gateway(dso, device, broker), _gateway(bsp, device, broker)
    connected = time.time()

    @gw_bsp.on(SystemStateNotice)
    async def run_start(msg: Received[SystemStateNotice]) -> None:
        if msg.sender == device and is_run_start(msg, connected) and not started.done():
            started.set_result((msg.body.since, run_wall_start(msg)))

    @gw_dso.on(PrequalificationForward)
    async def forward(msg: Received[PrequalificationForward]) -> None:
        trace.forwards.append(msg)
        verdicts = [
            AssetVerdict(
                asset_id=a.asset_id,
                qualified=True,
                checked_by="dso",
                validated_capacity_up_mw=round(QUALIFIED_SHARE * a.capacity_up_mw, 6),
                validated_capacity_down_mw=a.capacity_down_mw,
                reason=f"conformance: hosting capacity {QUALIFIED_SHARE:.0%} of the asked",
            )
            for a in msg.body.assets
        ]
        trace.dso_verdicts.update({v.asset_id: v for v in verdicts})
        await gw_dso.reply(msg, PrequalificationResult(bsp_id=msg.body.bsp_id, verdicts=verdicts))

    @gw_dso.on(MeritOrderList)
    async def validate(msg: Received[MeritOrderList]) -> None:
        results = []
        for e in msg.body.bids:
            if any(a.connection == Connection.DN and a.dso_id == dso.id for a in e.assets):
                upper = min(e.upper_bound_mw, round(VALIDATED_SHARE * e.quantity_mw, 6))
                trace.validated[e.bid_id] = min(trace.validated.get(e.bid_id, upper), upper)
                results.append(
                    BidValidation(
                        bid_id=e.bid_id,
                        status=BidStatus.LIMITED,
                        upper_bound_mw=upper,
                        limiting_element="line:conformance",
                        reason="conformance: the suite's DSO limit",
                    )
                )
        await gw_dso.reply(
            msg, MolValidation(mol_id=msg.body.mol_id, iteration=msg.body.iteration, dso_id=dso.id, results=results)
        )

    @gw_dso.on(CurtailmentRequest)
    async def curtail(msg: Received[CurtailmentRequest]) -> None:
        await gw_dso.reply(msg, CurtailmentResponse(dso_id=dso.id, accepted_mw=msg.body.amount_mw, status="accepted"))

    async with Recorder(trace.observer, [f"{PREFIX}/tso/{device_id}/#"]) as rec, gw_dso, gw_bsp:
        suite.rec, suite.gw = rec, gw_dso
        trace.messages = rec.messages
        _consume_inbox(gw_dso)
        # the suite's BSP: the testbed's own, which follows setpoints and reports telemetry
        if await rec.wait_for(is_birth(device), timeout_s) is None:
            trace.aborted = f"no retained actor_state 'online' from {device} within {timeout_s:g} s"
            return trace
        try:
            since, origin = await asyncio.wait_for(started, timeout_s)
        except TimeoutError:
            trace.aborted = (
                f"no 'run start' system_state from {device} within {timeout_s:g} s of its peers going online"
            )
            return trace
        suite.clock = clock = Clock(since, speed, wall_origin=origin)
        trace.run_start, trace.run_wall_origin, trace.isp0 = since, origin, scenario.isps()[0]
        bsp_actor = BSP(gw_bsp, clock, scenario, bsp_cfg)
        _consume_inbox(gw_bsp)
        assets = [asset_data(a) for a in bsp_cfg.assets]
        p = await suite.probe(
            "prequalification",
            PrequalificationRequest(bsp_id=bsp.id, assets=assets),
            "prequalification_result",
            10.0,
            gw=gw_bsp,
        )
        answer = await suite.answered(p)
        if answer is None:
            trace.aborted = f"no prequalification_result from {device} within {timeout_s:g} s"
            return trace
        bsp_actor.core.take_prequalification(answer.body)
        await bsp_actor.send_schedule()
        await bsp_actor.send_bids()
        first = min(i for i in scenario.isps() if i >= scenario.start)  # the first ISP with bids (a whole one)
        if not rules.bid_in_time(first, clock.now()):
            trace.aborted = (
                f"the suite's bids for the first ISP ({first:%H:%M}Z) were sent at {clock.now():%H:%M:%S}Z "
                f"scenario time, after its gate closure: the TSO started its run and its clock "
                f"{time.time() - origin + LEAD_S:.1f} s before; run the session at a lower --speed than "
                f"{speed:g}, or with a scenario that starts earlier before its first ISP"
            )
            return trace
        # the probes that open connections of their own come after the bids: a busy host is slow to connect
        birth = await rec.wait_for(is_birth(device), 0)
        assert birth is not None  # the peers went online before the run start
        trace.birth_retained = await retained_copy(trace.watch, birth.topic)
        trace.qos0_faithful = await qos0_delivered_as_qos0(trace.watch, gw_dso)
        await suite.heartbeat_probe()
        # real-time coordination: limit the most activated DN bid at 75 % of the run
        at = scenario.start + (scenario.end - scenario.start) * 0.75
        await clock.sleep_until(at)
        setpoints = [m for m in rec.messages if m.valid and m.envelope.type == "delta_setpoint"]
        by_asset = {a.asset_id: a for a in bsp_cfg.assets}
        touching = [b.bid_id for b in bsp_cfg.bids if any(by_asset[a].dso_id == dso.id for a in b.assets)]
        last = setpoints[-1].body.bid_deltas_mw if setpoints else {}
        dn_bids = sorted(touching, key=lambda b: abs(last.get(b, 0.0)), reverse=True)
        if dn_bids:
            bid = dn_bids[0]
            max_mw = round(LIMIT_SHARE * quantity[bid], 6)
            env = await gw_dso.publish(
                TerminationSignal(
                    dso_id=dso.id,
                    bid_id=bid,
                    action="limit",
                    max_mw=max_mw,
                    limiting_element="line:conformance",
                    reason="conformance: real-time limit",
                ),
                device,
            )
            trace.termination = (bid, max_mw, int(env.created_at.timestamp() * 1e6))
        await clock.sleep_until(scenario.end + timedelta(seconds=2 * scenario.setpoint_period_s))
        await asyncio.sleep(0.5)
        await suite.watch_leaving(leave)
    return trace


MO_SCRIPT = """
Session script (the suite plays the TSO and the first DSO of `--scenario` and three BSPs of its
own, `<device>-tn`, `<device>-dn` and the commercial party `<device>-c`; bids and needs are the
suite's, the same in every session):

1. The device is connected; the suite waits for its retained `actor_state` 'online'.
2. The suite's TSO publishes the retained `system_state` 'run start' to the device (T0 one minute
   before an ISP boundary, ISP0, as for a BSP) and a heartbeat probe.
3. For ISP0: `energy_bid`s from `<device>-tn` (TN, up 3 MW at 40 EUR/MWh and up 10 MW at 80) and
   `<device>-dn` (DN in the DSO's grid, up 10 MW at 50 and down 4 MW at 30); `flexibility_need`s:
   the TSO's balancing need, up 8 MW at up to 200 EUR/MWh, and the commercial party's, up 2 MW at
   up to 60 EUR/MWh.
4. The suite's DSO answers a `merit_order_list` at once: the DN up bid limited to 6 MW
   (line:conformance), every other bid accepted.
5. One setpoint period after ISP0 starts, a second heartbeat probe; the session ends.
Cleared by willingness to pay, the TSO gets 3 MW at 40 and 5 MW at 50, the commercial party 1 MW at
50 (the 80 EUR/MWh bid is above what it pays).
"""
SESSION_SCRIPTS["mo"] = MO_SCRIPT
MO_DN_BOUND_MW = 6.0  # the suite DSO limits the DN up bid to this


def mo_market(
    device_id: str, dso_id: str, tso_id: str, isp: datetime
) -> tuple[list[EnergyBid], list[tuple[Party, FlexibilityNeed]]]:
    """The bids and needs a market-operator session offers (MO_SCRIPT step 3)."""
    tn, dn, commercial = f"{device_id}-tn"[:64], f"{device_id}-dn"[:64], f"{device_id}-c"[:64]

    def bid(bsp: str, name: str, direction: Direction, mw: float, price: float, asset: BidAsset) -> EnergyBid:
        return EnergyBid(
            bid_id=f"{bsp}-{name}"[:64],
            bsp_id=bsp,
            process=ProcessType.AFRR,
            direction=direction,
            isp_start=isp,
            quantity_mw=mw,
            price_eur_per_mwh=price,
            ramp_rate_mw_per_min=2.0,
            assets=[asset.model_copy(update={"share_mw": mw})],
        )

    tn_asset = BidAsset(asset_id=f"{tn}-plant"[:64], connection=Connection.TN, share_mw=1.0)
    dn_asset = BidAsset(asset_id=f"{dn}-park"[:64], connection=Connection.DN, dso_id=dso_id, share_mw=1.0)
    bids = [
        bid(tn, "up40", Direction.UP, 3.0, 40.0, tn_asset),
        bid(tn, "up80", Direction.UP, 10.0, 80.0, tn_asset),
        bid(dn, "up50", Direction.UP, 10.0, 50.0, dn_asset),
        bid(dn, "down30", Direction.DOWN, 4.0, 30.0, dn_asset),
    ]
    needs = [
        (
            Party(role="tso", id=tso_id),
            FlexibilityNeed(
                need_id=f"{tso_id}-balancing"[:64],
                buyer_id=tso_id,
                kind="balancing",
                isp_start=isp,
                direction=Direction.UP,
                quantity=8.0,
                max_price_eur_per_mwh=200.0,
            ),
        ),
        (
            Party(role="bsp", id=commercial),
            FlexibilityNeed(
                need_id=f"{commercial}-need"[:64],
                buyer_id=commercial,
                kind="commercial",
                isp_start=isp,
                direction=Direction.UP,
                quantity=2.0,
                max_price_eur_per_mwh=60.0,
            ),
        ),
    ]
    return bids, needs


async def play_mo(
    device_id: str,
    broker: BrokerSpec,
    scenario: Scenario,
    *,
    speed: float = 1.0,
    timeout_s: float = 20.0,
    leave: Leave | None = None,
    observer: BrokerSpec | None = None,
) -> Trace:
    device, tso = Party(role="mo", id=device_id), Party(role="tso", id=scenario.tso.id)
    dso = Party(role="dso", id=scenario.dsos[0].id)
    trace = Trace("mo", device, tso, broker, speed, scenario.setpoint_period_s, scenario)
    suite = _Suite(trace, scenario, timeout_s)
    trace.observer = observer or broker
    gw_dso = _gateway(dso, device, broker)

    @gw_dso.on(MeritOrderList)
    async def validate(msg: Received[MeritOrderList]) -> None:
        if msg.sender != device:
            return
        results = []
        for e in msg.body.bids:
            if e.direction == Direction.UP and any(a.connection == Connection.DN for a in e.assets):
                upper = min(e.upper_bound_mw, MO_DN_BOUND_MW)
                results.append(
                    BidValidation(
                        bid_id=e.bid_id,
                        status=BidStatus.LIMITED,
                        upper_bound_mw=upper,
                        limiting_element="line:conformance",
                        reason="conformance: the suite's DSO limit",
                    )
                )
            else:
                upper = e.upper_bound_mw
                results.append(BidValidation(bid_id=e.bid_id, status=BidStatus.ACCEPTED, upper_bound_mw=upper))
            trace.validated[e.bid_id] = upper
        await gw_dso.reply(
            msg, MolValidation(mol_id=msg.body.mol_id, iteration=msg.body.iteration, dso_id=dso.id, results=results)
        )

    async with (
        Recorder(trace.observer, [f"{PREFIX}/mo/{device_id}/#"]) as rec,
        _gateway(tso, device, broker) as gw,
        gw_dso,
    ):
        suite.rec, suite.gw = rec, gw
        trace.messages = rec.messages
        _collect_rejections(gw, trace)
        _collect_rejections(gw_dso, trace)
        _consume_inbox(gw)
        _consume_inbox(gw_dso)
        if not await suite.start():
            return trace
        p = await suite.heartbeat_probe()
        bids, needs = mo_market(device_id, dso.id, tso.id, trace.first_isp)
        trace.market_bids = {b.bid_id: b for b in bids}
        trace.market_needs = {n.need_id: (party, n) for party, n in needs}
        parties = {b.bsp_id: Party(role="bsp", id=b.bsp_id) for b in bids} | {
            p.id: p for p, _ in needs if p.role == "bsp"
        }
        async with contextlib.AsyncExitStack() as stack:
            gws = {
                pid: await stack.enter_async_context(_gateway(party, device, broker)) for pid, party in parties.items()
            }
            for g in gws.values():
                _collect_rejections(g, trace)
                _consume_inbox(g)
            for b in bids:
                await gws[b.bsp_id].publish(b, device)
            for party, n in needs:
                await (gw if party.role == "tso" else gws[party.id]).publish(n, device)
            await suite.answered(p)
            await suite.clock.sleep_until(trace.first_isp + timedelta(seconds=trace.period_s))
            p = await suite.probe("heartbeat-2", Heartbeat(sent_at=datetime.now(UTC), interval_s=1.0), "heartbeat", 1.0)
            await suite.answered(p)
            await asyncio.sleep(0.3)
        await suite.watch_leaving(leave)
    return trace
