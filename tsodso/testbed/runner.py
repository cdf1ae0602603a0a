"""Run a scenario: every actor in this process on one broker, one clock, one exchange log.

The run directory receives the scenario as run (``scenario.yaml``), the exchange log
(``exchange.sqlite``), the events (``events.jsonl``), the nets the DSOs validated on (``nets/``)
and ``summary.json``.
"""

import asyncio
import gc
import json
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from tsodso.actors.bsp import BSP
from tsodso.actors.bsp_iec104 import SITE_CONNECT_S, BridgedBSP, site_link
from tsodso.actors.config import BspConfig, Scenario
from tsodso.actors.dso import DSO
from tsodso.actors.mo import MarketOperator
from tsodso.actors.tso import TSO
from tsodso.gateway import ExchangeLog, Gateway, LinkConditions, LinkImpairment
from tsodso.gateway.iec104 import SiteUnavailable
from tsodso.gateway.logs import configure_logging
from tsodso.schemas.envelope import Party
from tsodso.testbed import stats
from tsodso.testbed.clock import Clock, VirtualClock
from tsodso.testbed.results import RunSummary
from tsodso.testbed.scenario import ScenarioError, dump_scenario
from tsodso.testbed.security import ephemeral
from tsodso.testbed.stalls import LoopWatch
from tsodso.testbed.summary import summarize, timeseries


async def run_scenario(
    scenario: Scenario,
    broker_url: str,
    out: Path,
    *,
    speed: float = 50.0,
    virtual: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    """Run ``scenario`` to its end and return the summary (also written to ``out/summary.json``).

    Paced (``speed`` scenario seconds per wall second), or ``virtual``: scenario time advances when
    every actor has finished and every message is handled (``testbed.clock.VirtualClock``), as fast
    as the actors compute, with the same outcome every time."""
    if virtual and scenario.links:
        raise ScenarioError(
            "link conditions (delay, jitter, drop, outages) are wall-clock impairments: run them paced "
            "(--speed), not in virtual time"
        )
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("exchange.sqlite", "exchange.sqlite-wal", "exchange.sqlite-shm", "events.jsonl"):
        (out / stale).unlink(missing_ok=True)
    dump_scenario(scenario, out / "scenario.yaml")
    configure_logging(out / "events.jsonl")
    run_id = f"{scenario.name}-{scenario.coordination}-{uuid.uuid4().hex[:6]}"
    clock: Clock | VirtualClock = VirtualClock(scenario.start) if virtual else Clock(scenario.start, speed)
    traffic = clock if isinstance(clock, VirtualClock) else None
    wall_start = time.time()
    keys, trust = ephemeral(scenario)  # every actor signs with its own key and checks everyone's
    with ExchangeLog(out / "exchange.sqlite", run_id=run_id) as log:
        async with AsyncExitStack() as stack:

            async def gateway(role: str, actor_id: str) -> Gateway:
                party = Party.of(role, actor_id)
                if traffic is not None:
                    traffic.join(party)
                return await stack.enter_async_context(
                    Gateway(
                        party,
                        broker_url,
                        log=log,
                        signing_key=keys[str(party)],
                        trust=trust,
                        max_clock_skew_s=scenario.security.max_clock_skew_s,
                        traffic=traffic,
                    )
                )

            tso = TSO(await gateway("tso", scenario.tso.id), clock, scenario, scenario.tso)
            dsos = [DSO(await gateway("dso", d.id), clock, scenario, d, out) for d in scenario.dsos]
            bsps = [await bsp_actor(await gateway("bsp", b.id), clock, scenario, b, stack) for b in scenario.bsps]
            markets = (
                [MarketOperator(await gateway("mo", scenario.market_operator), clock, scenario)]
                if scenario.scheme.market_operator
                else []
            )
            # The grids, pandas and pydantic leave a large heap; a full garbage collection walking it
            # stalls the loop for ~100 ms, longer than an accelerated setpoint lives. Freeze it.
            gc.collect()
            gc.freeze()
            actors = (tso, *dsos, *bsps, *markets)
            if isinstance(clock, Clock):
                clock.wall_origin = time.time() + 0.2  # every actor is connected: scenario time starts now
                conditions = link_conditions(scenario, clock)
                for actor in actors:
                    actor.gw.links = conditions
            else:
                await clock.settled()  # the actors' presence is handled before time starts
            tasks = []
            for a in actors:
                work = asyncio.ensure_future(a.run())
                if isinstance(clock, VirtualClock):
                    clock.attach(work)  # time waits for each actor's run until it asks for time
                tasks.append(asyncio.create_task(a.gw.guard(work), name=f"{type(a).__name__}"))
            coordinator = asyncio.create_task(clock.run()) if isinstance(clock, VirtualClock) else None
            shown = asyncio.create_task(progress(clock, scenario)) if progress is not None else None
            watch = LoopWatch(clock)
            watching = asyncio.create_task(watch.run())
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in [*pending, watching, *([shown] if shown else []), *([coordinator] if coordinator else [])]:
                task.cancel()
            for task in done:
                task.result()  # an actor that failed fails the run, loudly
            if isinstance(clock, VirtualClock):
                await clock.settled()  # last answers handled
            else:
                await asyncio.sleep(clock.wall_seconds(scenario.setpoint_period_s))  # last answers arrive
    for dso in dsos:
        dso.write_results()
    write_outputs(
        scenario,
        out,
        tso.results(),
        [d.results() for d in dsos],
        wall_start=wall_start,
        speed="virtual" if virtual else speed,
        market=markets[0].results() if markets else None,
        loop_stalls={"runner": watch.results()},
        bridges={b.core.me: bridge_results(b) for b in bsps if isinstance(b, BridgedBSP)} or None,
    )
    return json.loads((out / "summary.json").read_text())


async def bsp_actor(gw: Gateway, clock: Clock | VirtualClock, scenario: Scenario, config: BspConfig, stack) -> BSP:
    """The testbed's BSP, or, for a BSP with an ``iec104`` site, the bridge to it (connected before the
    run starts; a site that does not answer ends the run before it starts, naming the site)."""
    if config.iec104 is None:
        return BSP(gw, clock, scenario, config)
    period_wall_s = clock.wall_seconds(scenario.setpoint_period_s) if isinstance(clock, Clock) else float("inf")
    link = await stack.enter_async_context(site_link(config, period_wall_s))
    if not await link.wait_connected(SITE_CONNECT_S):
        raise SiteUnavailable(
            f"{config.id}'s IEC 104 site {link.where} did not accept a connection within {SITE_CONNECT_S:g} s "
            f"({link.state}): start it (tsodso emulate iec104-site --device-id {config.id} ...)"
        )
    return BridgedBSP(gw, clock, scenario, config, link)


def bridge_results(bsp: BridgedBSP) -> dict[str, Any]:
    """What a BSP's bridge added to its setpoints (``testbed.results.SiteBridge``)."""

    def dist(values: list[float]) -> dict[str, Any]:
        return {k: round(v, 3) for k, v in stats.summary(values).items()} if values else {"count": 0}

    return {
        "site": bsp.link.where,
        "setpoints": len(bsp.timings) + bsp.not_taken,
        "not_taken": bsp.not_taken,
        "stale": sum(1 for t in bsp.timings if not t.fresh),
        "confirmations_missed": bsp.link.confirmations_missed,
        "limits_sent": bsp.limits_sent,
        "limits_not_taken": bsp.limits_not_taken,
        "site_losses": bsp.site_losses,
        "confirmed": dist([t.confirmed_ms for t in bsp.timings]),
        "measured": dist([t.measured_ms for t in bsp.timings if t.measured_ms is not None]),
    }


def link_conditions(scenario: Scenario, clock: Clock) -> LinkConditions:
    """The scenario's link conditions, outage windows turned into wall-clock times."""
    links = {}
    for link in scenario.links:
        jitter_s = link.jitter_ms if link.jitter == "lognormal" else link.jitter_ms / 1000
        links[link.between] = LinkImpairment(
            delay_s=link.delay_ms / 1000,
            jitter=link.jitter,
            jitter_s=jitter_s,
            drop_probability=link.drop_probability,
            outages=tuple((clock.wall(a), clock.wall(b)) for a, b in link.outages),
        )
    return LinkConditions(links)


def write_outputs(
    scenario: Scenario,
    out: Path,
    tso: dict,
    dsos: list[dict],
    *,
    wall_start: float,
    speed: float | str,
    clock_offsets: dict | None = None,
    market: dict | None = None,
    loop_stalls: dict | None = None,
    rejoins: list[dict] | None = None,
    bridges: dict | None = None,
) -> None:
    """``summary.json`` and ``timeseries.json`` into the run directory."""
    summary = summarize(scenario, out / "exchange.sqlite", tso, dsos, clock_offsets, market, rejoins)
    if loop_stalls is not None:
        summary["loop_stalls"] = loop_stalls  # per process, its event loop's stalls (testbed.stalls)
    if bridges is not None:
        summary["bridges"] = bridges  # per bridged BSP, what its IEC 104 site added (actors.bsp_iec104)
    summary["wall_clock_s"] = round(time.time() - wall_start, 3)
    summary["speed"] = speed
    RunSummary.model_validate(summary).write(out / "summary.json")  # every view reads it through the model
    (out / "timeseries.json").write_text(json.dumps(timeseries(scenario, tso, dsos)) + "\n")
