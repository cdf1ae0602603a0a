"""Virtual time (testbed.clock.VirtualClock): the coordinator's decisions without a broker, and the
reference scenario over real brokers, as fast as the actors compute and the same every time."""

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import mosquitto_or_skip
from tsodso.broker import start_broker
from tsodso.schemas import Party
from tsodso.testbed.clock import VirtualClock
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import ScenarioError, load_scenario

SCENARIO = "scenarios/nl-afrr-congestion.yaml"
T0 = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
WALL_FIELDS = ("latency", "_ms", "wall_clock_s", "loop_stalls", "bytes", "computation_time_s")  # wall-clock


async def _with_clock(clock: VirtualClock, *actors) -> None:
    coordinator = asyncio.create_task(clock.run())
    tasks = [asyncio.ensure_future(a) for a in actors]
    for task in tasks:
        clock.attach(task)
    try:
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    finally:
        coordinator.cancel()


async def test_time_requests_are_granted_in_scenario_order_whatever_the_wall_clock():
    clock = VirtualClock(T0)
    seen: list[tuple[str, datetime]] = []

    async def actor(name: str, every_s: float, until_s: float) -> None:
        t = T0
        while t < T0 + timedelta(seconds=until_s):
            t += timedelta(seconds=every_s)
            await clock.sleep_until(t)
            seen.append((name, clock.now()))

    await _with_clock(clock, actor("a", 4, 12), actor("b", 6, 12))
    # the same instant: granted one at a time, in the order the actors joined
    assert [(n, int((at - T0).total_seconds())) for n, at in seen] == [
        ("a", 4),
        ("b", 6),
        ("a", 8),
        ("a", 12),
        ("b", 12),
    ]


async def test_time_waits_until_every_message_sent_is_handled_and_every_actor_has_finished_its_step():
    clock = VirtualClock(T0)
    bsp = Party(role="bsp", id="b1")
    clock.join(bsp)
    log: list[str] = []

    async def sender() -> None:
        clock.expect("m1", bsp, Party(role="tso", id="t"))
        log.append("sent")
        await clock.sleep_until(T0 + timedelta(seconds=4))
        log.append(f"woke with the message handled: {'handled' in log}")

    async def receiver() -> None:
        await asyncio.sleep(0.2)  # the broker and the handler take their (wall) time
        log.append("handled")
        clock.handled("m1")

    await _with_clock(clock, sender(), receiver())
    assert log == ["sent", "handled", "woke with the message handled: True"]


async def test_a_message_nobody_handles_is_given_up_after_the_stall_limit_and_time_goes_on():
    clock = VirtualClock(T0, stall_s=0.2)
    dso = Party(role="dso", id="d1")
    clock.join(dso)

    async def sender() -> None:
        clock.expect("lost", dso, Party(role="tso", id="t"))  # the receiver is gone: never handled
        await clock.sleep_until(T0 + timedelta(seconds=4))

    await _with_clock(clock, sender())
    assert clock.given_up == 1 and clock.now() == T0 + timedelta(seconds=4)


def _run(broker: str, tmp_path, name: str, coordination=True, scenario_file: str = SCENARIO) -> dict:
    scenario = load_scenario(scenario_file, coordination=coordination)
    with start_broker(broker, data_dir=tmp_path / f"{name}-broker") as running:
        return asyncio.run(run_scenario(scenario, running.url, tmp_path / name, virtual=True))


def _without_wall_fields(value, path=""):
    if isinstance(value, dict):
        return {
            k: _without_wall_fields(v, f"{path}.{k}") for k, v in value.items() if not any(w in k for w in WALL_FIELDS)
        }
    if isinstance(value, list):
        return [_without_wall_fields(v, path) for v in value]
    return value


@pytest.mark.parametrize("broker", ["embedded", "mosquitto"])
def test_the_reference_scenario_in_virtual_time_gives_the_reference_outcome_the_same_every_time(broker, tmp_path):
    """Two runs on fresh brokers: the DSO's computed limit, no congestion, every setpoint delivered,
    and identical summaries but for the wall-clock measurements (latencies, computation times)."""
    if broker == "mosquitto":
        mosquitto_or_skip()
    first, second = (_run(broker, tmp_path, f"run{i}") for i in (1, 2))
    assert first["speed"] == "virtual" and first["late_cycles"] == 0
    assert first["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.0, abs=0.1)
    assert first["congestion_seconds"] == 0
    assert first["setpoints_sent"] == 225 and first["setpoints_missed"] == 0
    assert _without_wall_fields(first) == _without_wall_fields(second)


@pytest.mark.parametrize("scheme", ["common_market", "integrated_market"])
def test_two_virtual_runs_of_the_scheme_comparison_give_the_same_summary(tmp_path, scheme):
    """Five BSPs, two DSOs, a market: the clearing's block activations and the first setpoint of an
    ISP reach the BSPs in the same order every time (the TSO lets what its clearing set off be handled
    first), so two runs agree on every decision."""
    runs = [_run("memory", tmp_path, f"{scheme}{i}", scheme, "scenarios/schemes-comparison.yaml") for i in (1, 2)]
    assert runs[0]["setpoints_sent"] > 0
    assert _without_wall_fields(runs[0]) == _without_wall_fields(runs[1])


def test_without_coordination_the_line_congests_in_virtual_time_too(tmp_path):
    summary = _run("embedded", tmp_path, "off", coordination=False)
    assert summary["congestion_seconds"] > 0 and summary["max_line_loading_percent"] > 100
    assert summary["setpoints_missed"] == 0


def test_link_conditions_are_refused_in_virtual_time_with_one_line(tmp_path):
    from tsodso.actors.config import LinkConfig

    scenario = load_scenario(SCENARIO)
    scenario.links.append(LinkConfig(between="tso/*->dso/*", delay_ms=50))
    with pytest.raises(ScenarioError, match="link conditions .* are wall-clock impairments: run them paced"):
        asyncio.run(run_scenario(scenario, "mqtt://127.0.0.1:1?protocol=3.1.1", tmp_path / "r", virtual=True))


# --- the in-memory bus ---------------------------------------------------------------------------


def test_the_in_memory_bus_gives_the_same_run_as_a_real_broker(tmp_path):
    """The same scenario in virtual time on the embedded broker and on the in-memory bus: the same
    summary but for the wall-clock measurements (the gateway, its checks and its log are the same)."""
    on_broker, in_memory = _run("embedded", tmp_path, "broker"), _run("memory", tmp_path, "memory")
    assert in_memory["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.0, abs=0.1)
    assert _without_wall_fields(on_broker) == _without_wall_fields(in_memory)


async def test_the_in_memory_bus_checks_arrivals_keeps_retained_messages_and_sends_the_will(tmp_path):
    import sqlite3

    from tsodso.gateway import ExchangeLog, Gateway
    from tsodso.gateway.memory import MemoryClient
    from tsodso.schemas.messages import ActorState
    from tsodso.schemas.topics import topic_for

    url = "memory://test-bus"
    tso, dso = Party(role="tso", id="t1"), Party(role="dso", id="d1")
    with ExchangeLog(tmp_path / "x.sqlite", run_id="mem") as log:
        async with Gateway(tso, url, log=log) as gw:
            async with MemoryClient("test-bus", "stranger") as raw:
                raw.publish(topic_for(dso, "mol_validation", tso), b'{"envelope": 1}', qos=1)
            for _ in range(100):
                if gw.stats["rejected"]:
                    break
                await asyncio.sleep(0.01)
            seen: list[str] = []
            late = Gateway(dso, url)  # a newcomer gets the TSO's retained presence

            @late.on(ActorState)
            async def presence(msg):
                seen.append(f"{msg.sender}:{msg.body.status}")

            async with late:
                for _ in range(100):
                    if "tso/t1:online" in seen:
                        break
                    await asyncio.sleep(0.01)
        assert "tso/t1:online" in seen
        with pytest.raises(RuntimeError):
            async with MemoryClient("test-bus", "dying", will=("tsodso/v1/bsp/b9/actor_state/all/all", b"bye")):
                raise RuntimeError("killed")
        async with MemoryClient("test-bus", "watcher") as watcher:
            await watcher.subscribe("tsodso/v1/bsp/+/actor_state/all/all")
            assert (await asyncio.wait_for(watcher.queue.get(), 1)).payload == b"bye"
    rows = sqlite3.connect(log.path).execute(
        "SELECT outcome, reason FROM exchange WHERE actor='tso/t1' AND direction='in'"
    )
    assert any(
        o == "rejected" and (r or "").startswith("malformed: a message is an object") for o, r in rows.fetchall()
    )


def test_the_summary_is_written_and_read_through_one_typed_model(tmp_path):
    """summary.json is the model's dump; the terminal, the report and the comparison read it through
    the model, so a field that is renamed or mistyped fails where it is written, not in a view."""
    from pydantic import ValidationError

    from tsodso.testbed.results import RunSummary, load_summary

    summary = _run("memory", tmp_path, "typed")
    typed = load_summary(tmp_path / "typed")
    assert typed.model_dump(mode="json") == summary
    assert typed.schemes.total_cost_eur == summary["schemes"]["total_cost_eur"] > 0
    assert typed.latency_ms["delta_setpoint"].count == 225
    with pytest.raises(ValidationError, match="congestion_s"):
        RunSummary.model_validate({**summary, "congestion_s": 0.0})
