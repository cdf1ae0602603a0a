"""Reference devices for the conformance suite: ``tsodso emulate bsp|dso|tso|mo --device-id ID --broker URL``.

An emulator is the testbed's own BSP, DSO, TSO or market operator (``actors.bsp``, ``actors.dso``, ...) in its own
process, configured from a scenario (default: the reference scenario's bsp1 / dso1, renamed to the
device id), waiting for a conformance session's 'run start' and then behaving as its role's session
script expects. It serves until stopped (Ctrl-C / SIGTERM), leaving its 'offline' state.

Fault modes break chosen rules on purpose, to show that the suite catches them; :data:`FAULTS` says
which rules each one must fail (a test holds every fault to exactly that set).
"""

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from tsodso.actors import market
from tsodso.actors.bsp import BSP
from tsodso.actors.bsp_iec104 import SITE_CONNECT_S, BridgedBSP, site_link
from tsodso.actors.config import Iec104Site, Scenario
from tsodso.actors.coordination import SWITCH
from tsodso.actors.dso import DSO
from tsodso.actors.market import Need, Offer
from tsodso.actors.mo import MarketOperator
from tsodso.actors.rules import ISP, isp_of
from tsodso.actors.tso import TSO
from tsodso.gateway import Gateway, Received
from tsodso.gateway.iec104 import SiteUnavailable
from tsodso.schemas import signing
from tsodso.schemas.envelope import Envelope, Party
from tsodso.schemas.messages import (
    ActivationLimit,
    Body,
    DeltaSetpoint,
    FlexActivation,
    MolValidation,
    SystemStateNotice,
    Telemetry,
)
from tsodso.schemas.topics import topic_for
from tsodso.testbed.clock import Clock
from tsodso.testbed.conformance.session import dso_profile
from tsodso.testbed.standalone import LEAD_S, announce_run_start, is_run_start, track_presence, wait_until_online

FAULTS: dict[str, dict[str, tuple[str, frozenset[str]]]] = {
    "bsp": {
        "bad-schema": (
            "after its first message, sends a copy with a field the schema does not know",
            frozenset({"BSP-EN-010"}),
        ),
        "no-correlation": (
            "answers (telemetry, heartbeats) without causation and correlation ids",
            frozenset({"BSP-RR-010"}),
        ),
        "slow-ramp": ("raises its output at a quarter of its bid's declared ramp rate", frozenset({"BSP-SP-010"})),
        "ignore-limit": ("ignores activation limits, terminations included", frozenset({"BSP-SP-030", "BSP-SP-040"})),
        "stale-telemetry": ("reports only every third setpoint cycle", frozenset({"BSP-TM-010"})),
        "late-bids": ("sends its bids one setpoint period after their ISP has started", frozenset({"BSP-BD-010"})),
        "ignore-flex": ("ignores block activations (flex_activation)", frozenset({"BSP-FX-010"})),
        "no-will": ("connects without an MQTT will: killed, it leaves no 'offline' state", frozenset({"BSP-PR-020"})),
    },
    "dso": {
        "bad-schema": (
            "after its first message, sends a copy with a field the schema does not know",
            frozenset({"DSO-EN-010"}),
        ),
        "no-correlation": ("answers requests without causation and correlation ids", frozenset({"DSO-RR-010"})),
        "slow-validation": ("answers a merit order list after 3 s", frozenset({"DSO-MV-010"})),
        "bad-bounds": (
            "validates bids with an upper bound 1000 MW above the offered quantity",
            frozenset({"DSO-MV-030"}),
        ),
        "no-will": ("connects without an MQTT will: killed, it leaves no 'offline' state", frozenset({"DSO-PR-020"})),
    },
    "mo": {
        "bad-schema": (
            "after its first message, sends a copy with a field the schema does not know",
            frozenset({"MO-EN-010"}),
        ),
        "ignore-validation": (
            "clears with the offered quantities, not the bounds its DSOs validated",
            frozenset({"MO-MK-010"}),
        ),
        "greedy": ("serves the least willing need first", frozenset({"MO-MK-030"})),
        "late-result": (
            "sends the buyers their market results half a setpoint period after the ISP starts",
            frozenset({"MO-MK-040"}),
        ),
        "no-will": ("connects without an MQTT will: killed, it leaves no 'offline' state", frozenset({"MO-PR-020"})),
    },
    "tso": {
        "uncoordinated": (
            "runs with coordination off: DER bids activated without asking their DSO",
            frozenset({"TSO-PQ-010", "TSO-MV-010", "TSO-MV-020"}),
        ),
        "no-will": ("connects without an MQTT will: killed, it leaves no 'offline' state", frozenset({"TSO-PR-020"})),
    },
}


class FaultyGateway(Gateway):
    """The gateway, with the message-level faults of :data:`FAULTS` (none when ``fault`` is None)."""

    def __init__(self, *args: Any, fault: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, will=fault != "no-will", **kwargs)
        self.fault = fault
        self._bad_sent = False

    def _altered(self, body: Body, to: Party, kw: dict[str, Any]) -> Body | Envelope:
        """The body to send in place of ``body`` (``kw`` altered in place), or the envelope of a message
        that is counted but never sent."""
        if self.fault == "no-correlation" and kw.get("causation_id") is not None:
            kw["causation_id"] = kw["correlation_id"] = None
        if self.fault == "stale-telemetry" and isinstance(body, Telemetry) and (body.cycle or 0) % 3:
            env, _ = self.build(body, to)  # counted, never sent
            return env
        if self.fault == "bad-bounds" and isinstance(body, MolValidation):
            body = body.model_copy(
                update={
                    "results": [r.model_copy(update={"upper_bound_mw": r.upper_bound_mw + 1000}) for r in body.results]
                }
            )
        return body

    def _bad_copy(self, body: Body, to: Party) -> tuple[str, bytes, int] | None:
        """bad-schema: once, a copy of the first message with a field no schema has (topic, bytes, QoS)."""
        if self.fault != "bad-schema" or self._bad_sent or body.type_name == "actor_state":
            return None
        self._bad_sent = True
        _, payload = self.build(body, to)
        doc = json.loads(signing.split(payload)[0])
        doc["body"]["colour"] = "blue"  # extra fields are refused by every body schema
        bad = json.dumps(doc).encode()
        signed = signing.sign(bad, self.signing_key) if self.signing_key else bad
        return topic_for(self.me, body.type_name, to), signed, self.policy[body.type_name].qos

    async def publish(self, body: Body, to: Party, **kw: Any) -> Envelope:
        altered = self._altered(body, to, kw)
        if isinstance(altered, Envelope):
            return altered
        env = await super().publish(altered, to, **kw)
        if bad := self._bad_copy(altered, to):
            await self.publish_bytes(bad[0], bad[1], qos=bad[2])
        return env

    def publish_now(self, body: Body, to: Party, **kw: Any) -> Envelope:
        altered = self._altered(body, to, kw)
        if isinstance(altered, Envelope):
            return altered
        env = super().publish_now(altered, to, **kw)
        if bad := self._bad_copy(altered, to):
            self.spawn(self.publish_bytes(bad[0], bad[1], qos=bad[2]))
        return env


class EmulatedBSP(BSP):
    """The testbed's BSP with the behavioural faults."""

    fault: str | None = None

    async def run(self) -> None:
        if self.fault != "late-bids":
            return await super().run()
        await self.prequalify()
        await self.send_schedule()
        await self.clock.sleep_until(self.scenario.isps()[0] + timedelta(seconds=self.scenario.setpoint_period_s))
        await self.send_bids(self.scenario.isps())  # the first ISP's too, after its gate closed

    async def on_limit(self, msg: Received[ActivationLimit]) -> None:
        if self.fault != "ignore-limit":
            await super().on_limit(msg)

    async def on_flex(self, msg: Received[FlexActivation]) -> None:
        if self.fault != "ignore-flex":
            await super().on_flex(msg)

    def asset_targets(self, setpoint: DeltaSetpoint) -> dict[str, float]:
        targets = super().asset_targets(setpoint)
        if self.fault != "slow-ramp":
            return targets
        now = sum(a.delta_mw for a in self.assets.values())
        want = sum(targets.values())
        ramp = min((b.ramp_rate_mw_per_min for b in self.bids.values()), default=1.0)
        most = abs(now) + 0.25 * ramp * self.scenario.setpoint_period_s / 60
        if abs(want) <= most or abs(want) <= abs(now):
            return targets
        return {a: v * most / abs(want) for a, v in targets.items()}


class EmulatedMO(MarketOperator):
    """The testbed's market operator with the behavioural faults."""

    fault: str | None = None

    async def validate(self, dso, isp, conversation, entries):
        needs = await super().validate(dso, isp, conversation, entries)
        if self.fault == "ignore-validation":
            for bid_id, e in list(entries.items()):
                entries[bid_id] = e.model_copy(update={"upper_bound_mw": e.quantity_mw})
        return needs

    def clearing(self, needs: list[Need], offers: list[Offer]) -> list[market.Award]:
        if self.fault == "greedy":
            return market.clear_in_order(sorted(needs, key=lambda n: n.max_price_eur_per_mwh), offers)
        return super().clearing(needs, offers)

    async def send_results(self, result, buyers, conversation) -> None:
        if self.fault != "late-result":
            return await super().send_results(result, buyers, conversation)

        async def late() -> None:
            await self.clock.sleep_until(result.isp_start + timedelta(seconds=self.scenario.setpoint_period_s / 2))
            await MarketOperator.send_results(self, result, buyers, conversation)

        self.gw.spawn(late())


def bsp_profile(scenario: Scenario, device_id: str) -> Scenario:
    """The scenario's BSP ``device_id``, or its first BSP renamed to it."""
    if any(b.id == device_id for b in scenario.bsps):
        return scenario
    data = scenario.model_dump(mode="json")
    data["bsps"][0]["id"] = device_id
    return Scenario.model_validate(data)


async def emulate(
    role: str,
    device_id: str,
    broker: str,
    scenario: Scenario,
    *,
    fault: str | None = None,
    speed: float = 1.0,
    stop: asyncio.Event | None = None,
    signing_key: Any = None,
    ready: Callable[[], None] | None = None,
    site: Iec104Site | None = None,
) -> None:
    """Run one emulated device until ``stop`` is set (or SIGINT / SIGTERM); with ``signing_key`` it
    signs what it sends (``schemas.signing``). ``ready`` is called once the device is on the bus,
    waiting for its session. With ``site``, a BSP is the bridge to that IEC 104 site
    (``actors.bsp_iec104``): it connects to the site first, and fails naming it when it cannot."""
    if role not in FAULTS:
        raise ValueError(f"no emulator for role {role!r} (emulators: {', '.join(FAULTS)})")
    if fault is not None and fault not in FAULTS[role]:
        raise ValueError(f"unknown {role} fault {fault!r} (faults: {', '.join(FAULTS[role])})")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if role == "tso":
        return await _emulate_tso(
            device_id, broker, scenario, fault=fault, speed=speed, stop=stop, signing_key=signing_key, ready=ready
        )
    profiles = {"dso": dso_profile, "bsp": bsp_profile}
    profile = profiles[role](scenario, device_id) if role in profiles else scenario
    clock = Clock(profile.start, speed, wall_origin=float("inf"))
    async with contextlib.AsyncExitStack() as stack:
        link = None
        if site is not None and role == "bsp":
            bsp_config = next(b for b in profile.bsps if b.id == device_id)
            link = await stack.enter_async_context(site_link(bsp_config, profile.setpoint_period_s / speed, site))
            if not await link.wait_connected(SITE_CONNECT_S):
                raise SiteUnavailable(
                    f"IEC 104 site {link.where} did not accept a connection within {SITE_CONNECT_S:g} s ({link.state}): "
                    "start it (tsodso emulate iec104-site ...) or give its --site host:port"
                )
        gw = await stack.enter_async_context(
            FaultyGateway(Party.of(role, device_id), broker, fault=fault, signing_key=signing_key)
        )
        connected_at = time.time()
        if role == "dso":
            config = profile.dsos[0].model_copy(
                update={"validation_delay_s": 3.0} if fault == "slow-validation" else {}
            )
            actor: Any = DSO(gw, clock, profile, config)
        elif role == "mo":
            actor = EmulatedMO(gw, clock, profile)
            actor.fault = fault
        elif link is not None:
            actor = BridgedBSP(gw, clock, profile, next(b for b in profile.bsps if b.id == device_id), link)
        else:
            actor = EmulatedBSP(gw, clock, profile, next(b for b in profile.bsps if b.id == device_id))
            actor.fault = fault
        sessions: asyncio.Queue[SystemStateNotice] = asyncio.Queue()

        @gw.on(SystemStateNotice)
        async def run_start(msg: Received[SystemStateNotice]) -> None:
            mine = gw.me in msg.envelope.recipients  # a session for this device, not a broadcast
            if mine and is_run_start(msg, connected_at):
                clock.start, clock.wall_origin = msg.body.since, msg.envelope.created_at.timestamp() + LEAD_S
                sessions.put_nowait(msg.body)

        if ready is not None:
            ready()
        waiter = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            got = asyncio.ensure_future(sessions.get())
            await asyncio.wait({got, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if not got.done():
                got.cancel()
                break
            since = got.result().since
            isp0 = isp_of(since) + ISP  # the first ISP whose bids are not late
            # a market operator clears ISP0 before it starts, so its run starts with the session
            actor.scenario = profile.model_copy(
                update={"start": since if role == "mo" else isp0, "end": isp0 + 4 * ISP}
            )
            gw.log.info("session", since=since.isoformat(), isp0=isp0.isoformat())
            task = asyncio.ensure_future(actor.publish_forecast() if role == "dso" else actor.run())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if task.done() and task.exception() is not None:
                gw.log.error("session failed", error=repr(task.exception()))
        waiter.cancel()


async def _emulate_tso(
    device_id: str,
    broker: str,
    scenario: Scenario,
    *,
    fault: str | None,
    speed: float,
    stop: asyncio.Event,
    signing_key: Any = None,
    ready: Callable[[], None] | None = None,
) -> None:
    """The testbed's TSO running ``scenario`` once: it waits until the scenario's DSOs and BSPs are
    online, announces the run start and runs the scenario (as ``tsodso actor tso``), then serves
    until stopped."""
    profile = tso_profile(scenario, device_id)
    if fault == "uncoordinated":
        profile = profile.model_copy(update={"coordination": SWITCH[False]})
    clock = Clock(profile.start, speed, wall_origin=float("inf"))
    peers = {f"{r}/{i}" for r, i in profile.actors() if r != "tso"}
    async with FaultyGateway(Party(role="tso", id=device_id), broker, fault=fault, signing_key=signing_key) as gw:
        online = track_presence(gw)
        actor = TSO(gw, clock, profile, profile.tso)
        if ready is not None:
            ready()
        if await wait_until_online(gw, online, peers, float("inf"), stop):
            return  # stopped before they came
        await announce_run_start(gw, profile, clock)
        run = asyncio.ensure_future(actor.run())
        waiter = asyncio.ensure_future(stop.wait())
        await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if run.done() and run.exception() is not None:
            gw.log.error("session failed", error=repr(run.exception()))
        await waiter


def tso_profile(scenario: Scenario, device_id: str) -> Scenario:
    """The scenario with its TSO renamed to ``device_id``."""
    return scenario.model_copy(update={"tso": scenario.tso.model_copy(update={"id": device_id})})
