"""One actor in its own OS process, on any broker: ``tsodso actor tso|dso|bsp --id ID ...``.

Processes agree on the run's clock over the bus: the TSO waits until every DSO and BSP of the
scenario is online (their retained ``actor_state``), then announces the start with a
``system_state`` (state normal, reason 'run start') to everyone; scenario time begins one second
after that message's ``created_at``. Each actor appends to the run directory's exchange log and
writes ``<role>-<id>.json``; the TSO, last, writes ``summary.json``.

An actor restarted mid-run with the same command rejoins the run: while its run lasts it keeps
``run-<role>-<id>.json`` (the run's clock) and, every setpoint period, a snapshot of its state
(``state-<role>-<id>.pickle``, ``actors.base.Actor.STATE``). Started again before the run's end, it
resumes its broker session (QoS 1 messages queued while it was away arrive; those past their expiry
are refused as expired), takes its state back, skips what fell while it was away and records the
absence in ``rejoins-<role>-<id>.jsonl``, which the summary reports.
"""

import asyncio
import gc
import json
import os
import pickle
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tsodso.actors.base import Actor
from tsodso.actors.bsp import BSP
from tsodso.actors.config import Scenario
from tsodso.actors.dso import DSO
from tsodso.actors.mo import MarketOperator
from tsodso.actors.tso import TSO
from tsodso.gateway import BrokerSpec, ExchangeLog, Gateway, Received, RequestTimeout
from tsodso.gateway.clocksync import measure_offset
from tsodso.gateway.logs import configure_logging
from tsodso.gateway.presence import Presence
from tsodso.schemas.codes import SystemState
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import ActorState, SystemStateNotice
from tsodso.schemas.topics import ALL
from tsodso.testbed.clock import Clock
from tsodso.testbed.runner import link_conditions, write_outputs
from tsodso.testbed.security import load_identity, load_trust, tls_files
from tsodso.testbed.stalls import LoopWatch

RUN_START = "run start"
LEAD_S = 1.0


class RunNotStarted(RuntimeError):
    """A standalone actor that never saw its run begin: the message says who it waited for."""


def is_run_start(msg: Received[SystemStateNotice], connected_at: float) -> bool:
    """A TSO's run start sent since this actor connected (an older, retained one is stale)."""
    return (
        msg.sender.role == "tso"
        and msg.body.reason == RUN_START
        and msg.envelope.created_at.timestamp() >= connected_at - 1
    )


def track_presence(gw: Gateway) -> Presence:
    """The actors ('role/id') on the bus, kept up to date from their actor_state (``gateway.presence``:
    by the start each state belongs to, not by arrival order alone)."""
    presence = Presence()

    @gw.on(ActorState)
    def state(msg: Received[ActorState]) -> None:
        presence.update(str(msg.sender), msg.body, retained=msg.retained)

    return presence


REREAD_S = 2.0  # while some peer is missing, the retained presence is fetched again this often (wall s)


async def wait_until_online(
    gw: Gateway,
    presence: Presence,
    peers: set[str],
    deadline: float,
    stop: asyncio.Event | None = None,
    *,
    reread_s: float = REREAD_S,
) -> set[str]:
    """Wait until every one of ``peers`` ('role/id') is online, until ``deadline`` (wall time) or ``stop``;
    returns those still missing (empty: all there). Every ``reread_s`` the retained presence is fetched again
    (``Gateway.reread_retained``): a clustered broker can keep a retained state from a subscriber that
    came a moment after it."""
    reread_at = time.time() + reread_s
    while not peers <= presence.online and time.time() < deadline and not (stop is not None and stop.is_set()):
        if time.time() >= reread_at:
            gw.log.info("waiting for peers", missing=sorted(peers - presence.online))
            await gw.reread_retained()
            reread_at = time.time() + reread_s
        await asyncio.sleep(0.05)
    return peers - presence.online


async def announce_run_start(gw: Gateway, scenario: Scenario, clock: Clock) -> None:
    """The TSO starts the run: 'run start' to everyone; scenario time begins LEAD_S after it."""
    wall_start = datetime.now(UTC) + timedelta(seconds=LEAD_S)
    await gw.publish(
        SystemStateNotice(
            state=SystemState.NORMAL,
            area=scenario.tso.area,
            since=scenario.start,
            reason=RUN_START,
            speed=clock.speed,
            wall_start=wall_start,
        ),
        ALL,
    )
    clock.wall_origin = wall_start.timestamp()


def run_wall_start(msg: Received[SystemStateNotice]) -> float:
    """Wall time (s since the epoch) at which a run start's scenario time begins: its ``wall_start``,
    or, from a sender that does not give it, LEAD_S after the message was created."""
    if msg.body.wall_start is not None:
        return msg.body.wall_start.timestamp()
    return msg.envelope.created_at.timestamp() + LEAD_S


async def run_actor(
    role: str,
    actor_id: str,
    scenario: Scenario,
    broker_url: str,
    out: Path,
    *,
    speed: float,
    start_timeout_s: float = 60.0,
    secrets: Path | None = None,
) -> None:
    """One actor of ``scenario`` in this process. With ``secrets`` (``tsodso secure init``) it logs in
    with its own broker password, signs what it sends and checks every sender's signature; without,
    it runs open (anyone on the broker may speak as anyone)."""
    out.mkdir(parents=True, exist_ok=True)
    configure_logging(out / f"events-{role}-{actor_id}.jsonl")
    me = Party.of(role, actor_id)
    broker = BrokerSpec.parse(broker_url)
    security: dict = {}
    if secrets is not None:
        identity = load_identity(secrets, me)
        if broker.tls and broker.cert_file is None and (secrets / "tls").exists():
            broker = broker.with_certificate(
                *tls_files(secrets, identity.username)
            )  # mutual TLS: the certificate names it
        elif broker.username is None:
            broker = broker.with_credentials(identity.username, identity.password)
        security = {
            "signing_key": identity.signing_key,
            "trust": load_trust(secrets, scenario),
            "max_clock_skew_s": scenario.security.max_clock_skew_s,
        }
    clock = Clock(scenario.start, speed, wall_origin=float("inf"))
    started: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    wall_start = time.time()
    run_file, state_file = out / f"run-{role}-{actor_id}.json", out / f"state-{role}-{actor_id}.pickle"
    stored = running_run(run_file, state_file, speed)  # a run this actor left mid-way: rejoin it
    with ExchangeLog(out / "exchange.sqlite", run_id=scenario.name) as log:
        async with Gateway(me, broker, log=log, resume_session=stored is not None, **security) as gw:
            connected_at = time.time()
            online = track_presence(gw)

            @gw.on(SystemStateNotice)
            async def start(msg: Received[SystemStateNotice]) -> None:
                if is_run_start(msg, connected_at) and not started.done():
                    started.set_result(run_wall_start(msg))

            actor: Actor
            if role == "tso":
                actor = TSO(gw, clock, scenario, scenario.tso)
            elif role == "dso":
                actor = DSO(gw, clock, scenario, next(d for d in scenario.dsos if d.id == actor_id), out)
            elif role == "mo":
                actor = MarketOperator(gw, clock, scenario)
            else:
                actor = BSP(gw, clock, scenario, next(b for b in scenario.bsps if b.id == actor_id))
            clocking: asyncio.Task[None] | None = None  # the clock offset's measurement (not by the TSO)
            if stored is not None:
                clock.wall_origin = stored["wall_origin"]
                rejoin(actor, state_file, clock, out)
            elif role == "tso":
                peers = {f"{r}/{i}" for r, i in scenario.actors() if r != "tso"}
                if missing := await wait_until_online(gw, online, peers, time.time() + start_timeout_s):
                    raise RunNotStarted(
                        f"not every actor of the scenario came online within {start_timeout_s:g} s "
                        f"(missing: {', '.join(sorted(missing))}); start them with 'tsodso actor' on this broker"
                    )
                await announce_run_start(gw, scenario, clock)
            else:
                try:
                    clock.wall_origin = await asyncio.wait_for(started, start_timeout_s)
                except TimeoutError:
                    raise RunNotStarted(
                        f"no 'run start' from tso/{scenario.tso.id} within {start_timeout_s:g} s "
                        "(the TSO starts the run when every actor is online; a run that has ended does not start again)"
                    ) from None
                # this host's clock against the TSO's, so the summary can correct one-way latencies: measured
                # beside the run (its first minutes are the BSP's to prequalify and bid), and not at all when
                # the TSO does not answer in time (the run goes on, its latencies uncorrected)
                clocking = asyncio.create_task(
                    write_clock_offset(gw, Party(role="tso", id=scenario.tso.id), out / f"clock-{role}-{actor_id}.json")
                )
            if scenario.links:  # this actor's outgoing links, their outages on the run's clock
                gw.links = link_conditions(scenario, clock)
            gc.collect()
            gc.freeze()  # see testbed.runner: no full collection over the grid's heap mid-run
            watch = LoopWatch(clock)
            watching = asyncio.create_task(watch.run())
            write_json(
                run_file, {"wall_origin": clock.wall_origin, "speed": speed, "wall_end": clock.wall(scenario.end)}
            )
            snapshots = asyncio.create_task(keep_snapshots(actor, clock, state_file))
            await gw.guard(actor.run())
            await gw.guard(clock.sleep_until(scenario.end))
            await asyncio.sleep(clock.wall_seconds(2 * scenario.setpoint_period_s))  # last answers arrive
            watching.cancel()
            snapshots.cancel()
            if clocking is not None:
                clocking.cancel()
            run_file.unlink(missing_ok=True)  # the run is over: the same command starts a new one
            state_file.unlink(missing_ok=True)
            write_json(out / f"stalls-{role}-{actor_id}.json", {f"{role}/{actor_id}": watch.results()})
    if isinstance(actor, DSO):
        actor.write_results()
    if role in ("tso", "dso", "mo"):
        write_json(out / f"{role}-{actor_id}.json", actor.results())
    if role == "tso":
        paths = [out / f"dso-{d.id}.json" for d in scenario.dsos]
        market = out / f"mo-{scenario.market_operator}.json" if scenario.scheme.market_operator else None
        deadline = time.time() + 60
        while not all(p.exists() for p in [*paths, *([market] if market else [])]) and time.time() < deadline:
            await asyncio.sleep(0.1)
        offsets = {"tso/" + actor_id: {"offset_ms": 0.0, "uncertainty_ms": 0.0}}
        for path in out.glob("clock-*.json"):
            record = json.loads(path.read_text())
            offsets[record["actor"]] = record
        stalls = {}
        for path in sorted(out.glob("stalls-*.json")):
            stalls.update(json.loads(path.read_text()))
        rejoins = [
            json.loads(line) for path in sorted(out.glob("rejoins-*.jsonl")) for line in path.read_text().splitlines()
        ]
        write_outputs(
            scenario,
            out,
            actor.results(),
            [json.loads(p.read_text()) for p in paths],
            wall_start=wall_start,
            speed=speed,
            clock_offsets=offsets,
            market=json.loads(market.read_text()) if market and market.exists() else None,
            loop_stalls=stalls,
            rejoins=rejoins,
        )


async def write_clock_offset(gw: Gateway, tso: Party, path: Path, budget_s: float = 10.0) -> None:
    """Measure this host's clock against the TSO's and write it to ``path`` (for the summary)."""
    try:
        offset = await measure_offset(gw, tso, probes=10, timeout_s=budget_s)
    except RequestTimeout as exc:
        gw.log.warning("clock offset not measured: one-way latencies stay uncorrected", error=str(exc))
        return
    write_json(
        path,
        {
            "actor": str(gw.me),
            "offset_ms": -offset.offset_ms,
            "uncertainty_ms": offset.uncertainty_ms,
            "rtt_min_ms": offset.rtt_min_ms,
        },
    )


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON so that another process never reads half of it (a temporary file, renamed)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def running_run(run_file: Path, state_file: Path, speed: float) -> dict[str, Any] | None:
    """The run this actor was part of, if it is still going (its end lies ahead) and the actor left a
    snapshot; None for a new run."""
    try:
        stored = json.loads(run_file.read_text())
    except (FileNotFoundError, ValueError):
        return None
    if stored.get("speed") != speed or stored.get("wall_end", 0) <= time.time() or not state_file.exists():
        return None
    return stored


def rejoin(actor: Any, state_file: Path, clock: Clock, out: Path) -> None:
    """Take the actor's last snapshot back and note how long it was away (``rejoins-<role>-<id>.jsonl``).
    The snapshot is the actor's own, written by this same command into its own run directory."""
    snapshot = pickle.loads(state_file.read_bytes())
    back = clock.now()
    actor.restore(snapshot["state"], back)
    record = {
        "actor": str(actor.me),
        "away_from": snapshot["at"],
        "back_at": back.isoformat(),
        "away_from_us": round(snapshot["wall"] * 1e6),
        "back_us": round(time.time() * 1e6),
        "away_s": round((back - datetime.fromisoformat(snapshot["at"])).total_seconds(), 3),
    }
    with (out / f"rejoins-{actor.me.role}-{actor.me.id}.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")
    actor.log.warning("rejoined the run after a restart", **record)


async def keep_snapshots(actor: Any, clock: Clock, path: Path) -> None:
    """Every setpoint period (at least 0.2 s of wall time apart), the actor's state to ``path``
    (written aside, then renamed: a kill never leaves half a snapshot)."""
    interval = max(clock.wall_seconds(actor.scenario.setpoint_period_s), 0.2)
    tmp = path.with_suffix(".tmp")
    while True:
        tmp.write_bytes(pickle.dumps({"at": clock.now().isoformat(), "wall": time.time(), "state": actor.snapshot()}))
        os.replace(tmp, path)
        await asyncio.sleep(interval)
