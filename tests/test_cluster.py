"""The testbed on a 3-node NATS cluster (JetStream, MQTT): actors spread over the nodes by their
client id, a node lost mid-run moves its actors to another node with nothing lost, and one cluster
serves run after run (before, the second run's TSO could wait for ever: a node delivered the
previous run's stored 'offline' after the new 'online')."""

import asyncio
import json
import socket
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from tests.conftest import assert_no_setpoint_lost, run_processes, short_scenario_file
from tsodso.broker import start_broker
from tsodso.broker.launch import BrokerExited, RunningBroker, RunningCluster, free_port
from tsodso.broker.nats import NatsMissing, binary, write_cluster_config
from tsodso.gateway.mqtt import home_node
from tsodso.testbed.runner import run_scenario
from tsodso.testbed.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = "scenarios/nl-afrr-congestion.yaml"
pytestmark = pytest.mark.xdist_group("cluster")  # one cluster at a time: 3 servers each


@pytest.fixture
def cluster(tmp_path):
    try:
        binary()
    except NatsMissing as exc:
        pytest.skip(str(exc))
    with start_broker("nats", nodes=3, data_dir=tmp_path / "cluster") as running:
        yield running


def events(path: Path, actor: str) -> list[dict]:
    rows = (json.loads(line) for line in path.read_text().splitlines())
    return [r for r in rows if r.get("actor") == actor and r.get("event") in ("connected", "reconnected")]


def test_a_node_lost_mid_run_moves_its_actors_to_another_and_nothing_is_lost(cluster, tmp_path):
    """SIGKILL to the node the DSO and the BSP are on, at 10:01:30, not restarted: both reconnect to
    another node, their sessions (queued QoS 1 messages, subscriptions) and the retained states kept by
    the cluster; the run completes with the reference outcome and no setpoint lost."""
    nodes = [f"{m.host}:{m.port}" for m in cluster.members]
    victim = home_node("bsp-bsp1", 3)
    assert home_node("dso-dso1", 3) == victim != home_node("tso-tso", 3)  # the TSO's node lives
    scenario = load_scenario(SCENARIO, coordination=True)
    # 8.5 scenario minutes after the kill (20 s of wall time at 25x): on a busy host the cluster's new
    # leaders may take seconds, and what they held back must still arrive before the run ends
    scenario.end = scenario.start + timedelta(minutes=10)
    killed_at = datetime.fromisoformat("2026-11-23T10:01:30+00:00")

    async def kill(clock, _scenario):
        await clock.sleep_until(killed_at)
        cluster.members[victim].stop(hard=True)

    out = tmp_path / "run"
    summary = asyncio.run(run_scenario(scenario, cluster.url, out, speed=25.0, progress=kill))
    assert summary["setpoints_sent"] == 135  # 10:00 to 10:09, every 4 s
    # none lost; those the cluster held back while it moved the lost node's work (its consumers elect
    # a new leader: seconds, 36 setpoints at 25x once) arrive late, and expired ones are refused as such
    assert summary["setpoints_lost"] == 0, summary
    assert summary["setpoints_missed"] == summary["setpoints_expired"], summary
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)
    assert summary["congestion_seconds"] == 0
    for actor in ("bsp/bsp1", "dso/dso1"):
        (first, *again) = events(out / "events.jsonl", actor)
        assert first["node"] == nodes[victim], first
        assert again and all(e["node"] != nodes[victim] for e in again), again
    # the TSO started on its own node; the cluster may drop it too while it elects new leaders (its
    # node lives on: the TSO then comes back, to any node), which the outcome above shows it survived
    tso = events(out / "events.jsonl", "tso/tso")
    assert tso[0]["node"] == nodes[home_node("tso-tso", 3)] != nodes[victim]


def test_one_cluster_serves_run_after_run_of_separate_actor_processes(cluster, tmp_path):
    """Two runs in a row of the TSO, DSO and BSP as their own processes on one cluster: each TSO sees
    every actor of its run online (the previous run's 'offline', stored by the cluster, is of an earlier
    start), starts the run, and each run gives the reference outcome."""
    scenario = short_scenario_file(tmp_path, 7)
    for run in ("first", "second"):
        out = tmp_path / run
        commands = {
            role: ["actor", role, "--id", ident, "--scenario", str(scenario), "--broker", cluster.url]
            + ["--speed", "25", "--out", str(out), "--insecure"]
            for role, ident in (("tso", "tso"), ("dso", "dso1"), ("bsp", "bsp1"))
        }
        run_processes(commands, ROOT)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01), run
        assert summary["congestion_seconds"] == 0, run
        assert_no_setpoint_lost(summary)
        assert summary["setpoints_sent"] >= 70, run


def test_a_node_that_cannot_start_is_named_with_its_reason_not_waited_for(tmp_path):
    """A node whose MQTT port another socket holds by the time it starts (a port is free when chosen,
    and any connection may take it before the node listens) exits; the start says which node and why,
    at once, instead of waiting for a cluster that cannot deliver."""
    try:
        binary()
    except NatsMissing as exc:
        pytest.skip(str(exc))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        mqtt = [("127.0.0.1", free_port()), ("127.0.0.1", free_port()), ("127.0.0.1", taken)]
        routes = [("127.0.0.1", free_port()) for _ in mqtt]
        members = []
        for i, node in enumerate(mqtt):
            conf = write_cluster_config(tmp_path, i, node, routes)
            members.append(RunningBroker("nats", "", *node, [binary(), "-c", str(conf)], conf.parent))
        url = "mqtt://" + ",".join(f"{h}:{p}" for h, p in mqtt) + "?protocol=3.1.1"
        cluster = RunningCluster("nats", url, members=members)
        try:
            with pytest.raises(
                BrokerExited, match=rf"nats node 3 of 3 \(127.0.0.1:{taken}\) exited .*address already in use"
            ):
                cluster.start()
        finally:
            cluster.stop(hard=True)
