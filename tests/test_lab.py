"""The network lab (testbed.lab): each actor on its own host (a network namespace), the broker on
another, real TCP between them; rate limits, delays and partitions on the hosts' links."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import mosquitto_or_skip, short_scenario_file
from tsodso.actors.config import LabHost
from tsodso.testbed.bench.failover import qos1_not_arrived
from tsodso.testbed.deploy import up
from tsodso.testbed.lab import message_level_links, plan, shaping
from tsodso.testbed.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "nl-afrr-congestion.yaml"


def with_lab(tmp_path: Path, lab: dict, minutes: float = 7, **tso: object) -> Path:
    path = short_scenario_file(tmp_path, minutes)
    data = yaml.safe_load(path.read_text())
    data["lab"] = lab
    data["tso"].update(tso)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_plan_gives_every_actor_and_the_broker_a_host_and_an_address(tmp_path):
    scenario = load_scenario(with_lab(tmp_path, {"subnet": "10.88.5.0/24", "hosts": {"bsp/bsp1": {"rate_kbit": 64}}}))
    hosts = {h.name: h for h in plan(scenario)}
    assert {n: h.ip for n, h in hosts.items()} == {
        "broker": "10.88.5.10",
        "tso/tso": "10.88.5.20",
        "dso/dso1": "10.88.5.21",
        "bsp/bsp1": "10.88.5.22",
    }
    assert hosts["bsp/bsp1"].netns == "tsl-bsp-bsp1" and hosts["bsp/bsp1"].link.rate_kbit == 64
    assert len({h.veth for h in hosts.values()}) == 4 and all(len(h.veth) <= 15 for h in hosts.values())


def test_links_are_shaped_by_tbf_or_by_netem_where_the_kernel_has_it():
    slow = LabHost(rate_kbit=64)
    assert shaping(slow, "tsl3", netem=False)[:8] == ["tc", "qdisc", "replace", "dev", "tsl3", "root", "tbf", "rate"]
    far = LabHost(rate_kbit=64, delay_ms=50, jitter_ms=10, loss_percent=1)
    assert shaping(far, "eth0", netem=True) == (
        [
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
            "root",
            "netem",
            "delay",
            "50.0ms",
            "10.0ms",
            "distribution",
            "normal",
            "loss",
            "1.0%",
            "rate",
            "64.0kbit",
        ]
    )
    # without netem the rate is still the kernel's; the delay goes to the gateways (message_level_links)
    assert shaping(far, "eth0", netem=False)[6] == "tbf"
    assert shaping(LabHost(), "eth0", netem=True) is None


def test_without_netem_a_message_is_delayed_by_both_its_hosts_links_and_the_brokers_twice(tmp_path):
    scenario = load_scenario(
        with_lab(
            tmp_path,
            {
                "hosts": {
                    "tso/tso": {"delay_ms": 20, "jitter_ms": 3},
                    "dso/dso1": {"delay_ms": 5, "jitter_ms": 4},
                    "broker": {"delay_ms": 1, "loss_percent": 10},
                }
            },
        )
    )
    links = {link.between: link for link in message_level_links(scenario)}
    tso_dso = links["tso/tso->dso/dso1"]
    assert tso_dso.delay_ms == 27 and tso_dso.jitter_ms == pytest.approx(5.0) and tso_dso.jitter == "normal"
    assert tso_dso.drop_probability == pytest.approx(1 - 0.9 * 0.9)
    assert links["bsp/bsp1->tso/tso"].delay_ms == 22
    assert links["bsp/bsp1->*"].delay_ms == 2  # to everyone: its own link is plain, the broker's twice


@pytest.mark.parametrize(
    ("lab", "says"),
    [
        ({"hosts": {"bsp/bsp9": {"rate_kbit": 64}}}, "lab.hosts: 'bsp/bsp9' is no host of this scenario; its hosts:"),
        (
            {"hosts": {"dso/dso1": {"partitions": [["2026-11-23T10:05:00Z", "2026-11-23T10:01:00Z"]]}}},
            "lab.hosts.dso/dso1: partition ends 10:01:00, not after it begins 10:05:00",
        ),
    ],
)
def test_a_lab_mistake_is_one_line_naming_it(tmp_path, lab, says):
    from tsodso.testbed.scenario import ScenarioError

    with pytest.raises(ScenarioError) as caught:
        load_scenario(with_lab(tmp_path, lab))
    assert says in str(caught.value)


@pytest.fixture
def one_lab_at_a_time():
    """The lab tests wait for each other on a file lock, across pytest-xdist workers: their xdist group
    alone did not keep them on one worker (`-n 3 --dist loadgroup` on this file ran two labs at once)."""
    import fcntl

    with open("/tmp/tsodso-lab-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"), reason="the lab needs root, ip and tc"
)


@needs_root
@pytest.mark.xdist_group("lab")  # one lab per machine
def test_a_second_lab_on_the_machine_is_refused_while_the_first_is_up(tmp_path, one_lab_at_a_time):
    from tsodso.testbed.lab import LOCK, Lab, LabError

    scenario = load_scenario(SCENARIO)
    with Lab(scenario) as first:
        with pytest.raises(LabError, match=r"a lab is already up on this machine \(process \d+\): one at a time"):
            Lab(scenario).up()
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert {h.netns for h in first.hosts.values()} <= {line.split()[0] for line in listed.splitlines()}
    Lab(scenario).up().down()  # once it is down, the next may come
    # a lab left by a process that died, its number since given to another (live) process, is cleared
    LOCK.write_text(f"{os.getpid()} 1")  # this process, but started at another time
    Lab(scenario).up().down()


@needs_root
@pytest.mark.xdist_group("lab")  # one lab per machine
def test_a_partitioned_dso_host_triggers_the_mol_fallback_and_the_run_recovers_when_it_heals(
    tmp_path, one_lab_at_a_time
):
    """The DSO's host cut off from 09:59:50 to 10:02:30 (6.4 s of wall time at 25x, longer than the
    TSO's 4-s validation window; shorter than the MQTT keepalive, so the TCP connection survives and
    retransmits): the TSO validates ISP 10:00 without it (exclude_dn), the DSO validates ISP 10:15
    again, nothing is lost. The BSP's link is rate-limited, the TSO's delayed."""
    mosquitto_or_skip()
    scenario = with_lab(
        tmp_path,
        {
            "hosts": {
                "dso/dso1": {"partitions": [["2026-11-23T09:59:50Z", "2026-11-23T10:02:30Z"]]},
                "bsp/bsp1": {"rate_kbit": 512},
                "tso/tso": {"delay_ms": 5},
            }
        },
        minutes=18,
        mol_timeout_s=4,
        mol_retries=0,
    )
    out = tmp_path / "deployment"
    summary = up(scenario, out, speed=25.0, lab=True)
    assert summary["mol_fallbacks"] == ["dso1:mol-202611231000:exclude_dn"]  # ISP 10:00, while cut off
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)  # ISP 10:15, healed
    assert summary["congestion_seconds"] == 0
    assert summary["setpoints_lost"] == 0 and summary["setpoints_missed"] == summary["setpoints_expired"]
    assert qos1_not_arrived(out / "run" / "exchange.sqlite") == 0  # TCP held what the partition delayed
    changes = [json.loads(line) for line in (out / "run" / "lab.jsonl").read_text().splitlines()]
    assert [(c["host"], c["link"]) for c in changes] == [("dso/dso1", "down"), ("dso/dso1", "up")]
    queues = (out / "run" / "lab-queues.txt").read_text()
    towards_bsp = queues[queues.index("towards bsp/bsp1") :]
    assert "rate 512Kbit" in towards_bsp and "Sent 0 bytes" not in towards_bsp.split("from bsp/bsp1")[0]
    # the TSO's 5-ms link: in every message it sends and gets (netem, or per message without it)
    assert summary["latency_by_link_ms"]["tso->bsp"]["p50"] >= 5.0
    assert summary["latency_by_link_ms"]["bsp->tso"]["p50"] >= 5.0
    if any("no netem" in note for note in summary["notes"]):
        assert (out / "run" / "lab-scenario.yaml").exists()


@needs_root
@pytest.mark.xdist_group("lab")
def test_a_nats_cluster_in_the_lab_has_a_node_on_each_host_and_carries_the_run(tmp_path, one_lab_at_a_time):
    """`lab.broker_nodes: 3`: a NATS cluster with each node on a host of its own (routes over the lab's
    links), the actors logging in with their own users (tsodso secure init) and each starting on the
    node its id hashes to; the run gives the reference outcome."""
    from tsodso.broker.nats import NatsMissing, binary
    from tsodso.gateway.mqtt import home_node

    try:
        binary()
    except NatsMissing as exc:
        pytest.skip(str(exc))
    scenario = with_lab(tmp_path, {"broker_nodes": 3})
    out = tmp_path / "deployment"
    summary = up(scenario, out, speed=25.0, lab=True)
    assert summary["dso_limits_mw"]["bsp1-up"] == pytest.approx(15.01, abs=0.01)
    assert summary["congestion_seconds"] == 0 and summary["setpoints_sent"] >= 70
    assert summary["setpoints_lost"] == 0
    for conf in sorted((out / "broker").glob("node*/nats.conf")):
        text = conf.read_text()
        assert text.count("nats-route://10.77.0.") == 3 and "ack_wait" in text
    nodes = ["10.77.0.10", "10.77.0.11", "10.77.0.12"]
    for role, ident in (("tso", "tso"), ("dso", "dso1"), ("bsp", "bsp1")):
        rows = [json.loads(line) for line in (out / "run" / f"events-{role}-{ident}.jsonl").read_text().splitlines()]
        (first,) = [r for r in rows if r.get("event") == "connected"]
        assert first["node"] == f"{nodes[home_node(f'{role}-{ident}', 3)]}:1883"
