"""The network lab: each actor on its own host and the broker on another, real TCP between them.

A host is a Linux network namespace (``tsl-<role>-<id>``, ``tsl-broker``) with one link, a veth
pair, to a switch (the bridge ``tsl-br`` in the initial namespace, which also reaches every host).
What the scenario declares per host (``Scenario.lab``) is applied to that link, in each direction:

- a rate limit (``tc`` tbf; with netem, netem's own rate);
- delay, jitter and loss with ``tc`` netem where the kernel has it. Where it has not (``tc qdisc add
  ... netem`` answers "Specified qdisc kind is unknown"), the lab says so and the gateways apply the
  same delay, jitter and loss per message instead (:func:`message_level_links`: a message from A to B
  crosses A's link, the broker's twice, and B's);
- partitions: the link taken down and brought back at scenario instants (:class:`Partitions`), so
  that TCP retransmits, keepalives expire, the broker keeps the sessions and actors reconnect as
  they would between control centres.

The broker is Mosquitto on host ``broker``, or (``lab.broker_nodes`` 3 or more) a NATS cluster with
each node on a host of its own (``broker-1``, ``broker-2``, ...), routes between them over the lab's
links: cutting one node's host off is a node lost to the network, not a killed process.

Decisions (the plan, the commands) are apart from running them (:class:`Lab`). One lab at a time
per machine; creating it needs root (CAP_NET_ADMIN).
"""

import ipaddress
import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tsodso.actors.config import LabHost, LinkConfig, Scenario

PREFIX = "tsl"
BRIDGE = f"{PREFIX}-br"
BROKER = "broker"


class LabError(RuntimeError):
    """The lab cannot be built here: the message says why and what would do."""


LOCK = Path("/run/tsodso-lab.owner")  # who holds the machine's lab: 'pid start-ticks', or 'kept'


def _started(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22), None if there is none:
    with the pid it names one process, never a later one the kernel gave the same number."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _me() -> str:
    return f"{os.getpid()} {_started(os.getpid())}"


def _owner() -> str | None:
    """Who holds the lab now, or None (no lab, or its process is gone)."""
    try:
        text = LOCK.read_text().strip()
    except (FileNotFoundError, PermissionError):
        return None
    if text == "kept":
        return "left up by 'tsodso lab up'"
    pid, _, started = text.partition(" ")
    if not pid.isdigit() or _started(int(pid)) != started:
        return None  # gone (or the number now names another process)
    return f"process {pid}"


@dataclass(frozen=True)
class Host:
    name: str  # 'broker' or the actor's 'role/id'
    netns: str
    veth: str  # the switch's end of the host's link (the host's end is its eth0)
    ip: str
    link: LabHost


def plan(scenario: Scenario) -> list[Host]:
    """The lab's hosts: the broker (.10; a cluster's nodes .10, .11, ...), then every actor of the
    scenario (.20, .21, ...)."""
    net = ipaddress.IPv4Network(scenario.lab.subnet)
    if net.prefixlen != 24:
        raise LabError(f"lab.subnet {scenario.lab.subnet}: give a /24 (e.g. 10.77.0.0/24)")
    actors = [f"{role}/{ident}" for role, ident in scenario.actors()]
    if len(actors) > 200:
        raise LabError(f"{len(actors)} actors: a lab here holds at most 200")
    placed = [(name, 10 + k) for k, name in enumerate(scenario.lab.broker_hosts)]
    placed += [(name, 20 + k) for k, name in enumerate(actors)]
    return [
        Host(
            name,
            f"{PREFIX}-{name.replace('/', '-')}"[:60],
            f"{PREFIX}{i}",
            str(net.network_address + offset),
            scenario.lab.hosts.get(name, LabHost()),
        )
        for i, (name, offset) in enumerate(placed)
    ]


def switch_address(scenario: Scenario) -> str:
    return str(ipaddress.IPv4Network(scenario.lab.subnet).network_address + 1)


def shaping(link: LabHost, device: str, netem: bool) -> list[str] | None:
    """The ``tc`` command that shapes one direction of a link (None: nothing to shape)."""
    impaired = link.delay_ms or link.jitter_ms or link.loss_percent
    if netem and impaired:
        cmd = ["tc", "qdisc", "replace", "dev", device, "root", "netem"]
        if link.delay_ms or link.jitter_ms:
            cmd += ["delay", f"{link.delay_ms}ms"]
            if link.jitter_ms:
                cmd += [f"{link.jitter_ms}ms", "distribution", "normal"]
        if link.loss_percent:
            cmd += ["loss", f"{link.loss_percent}%"]
        if link.rate_kbit:
            cmd += ["rate", f"{link.rate_kbit}kbit"]
        return cmd
    if link.rate_kbit:
        burst = max(1600, round(link.rate_kbit * 1000 / 8 / 10))  # 100 ms at the rate, at least one frame
        return ["tc", "qdisc", "replace", "dev", device, "root", "tbf", "rate", f"{link.rate_kbit}kbit"] + [
            "burst",
            str(burst),
            "latency",
            "2s",  # the queue: up to 2 s of traffic waits, beyond it packets drop
        ]
    return None


def message_level_links(scenario: Scenario) -> list[LinkConfig]:
    """The lab's delay, jitter and loss as the gateways' link conditions (for a kernel without netem):
    a message from A to B crosses A's link, the broker's link twice and B's link."""
    links = {h.name: h.link for h in plan(scenario)}
    brokers = [links.pop(name) for name in scenario.lab.broker_hosts]
    broker = LabHost(  # a cluster: the slowest node's link (a message may go through any of them)
        delay_ms=max(b.delay_ms for b in brokers),
        jitter_ms=max(b.jitter_ms for b in brokers),
        loss_percent=max(b.loss_percent for b in brokers),
    )

    def combined(parts: list[LabHost]) -> tuple[float, float, float]:
        delay = sum(p.delay_ms for p in parts)
        jitter = math.sqrt(sum(p.jitter_ms**2 for p in parts))
        kept = math.prod(1 - p.loss_percent / 100 for p in parts)
        return delay, jitter, 1 - kept

    out = []
    for a, la in links.items():
        for b, lb in [*links.items(), ("*", LabHost())]:
            if a == b:
                continue
            delay, jitter, loss = combined([la, broker, broker, lb])
            if delay or jitter or loss:
                out.append(
                    LinkConfig(
                        between=f"{a}->{b}",
                        delay_ms=delay,
                        jitter="normal" if jitter else "none",
                        jitter_ms=jitter,
                        drop_probability=min(1.0, loss),
                    )
                )
    return out


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise LabError(f"{' '.join(cmd)}: {(result.stderr or result.stdout).strip()}")
    return result


def kernel_has_netem() -> bool:
    """Whether ``tc`` can add a netem qdisc here (tried in a throwaway namespace)."""
    probe = f"{PREFIX}-netem-probe"
    _run(["ip", "netns", "del", probe], check=False)
    _run(["ip", "netns", "add", probe])
    try:
        _run(["ip", "netns", "exec", probe, "ip", "link", "set", "lo", "up"])
        return (
            _run(
                ["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem"], check=False
            ).returncode
            == 0
        )
    finally:
        _run(["ip", "netns", "del", probe], check=False)


class Lab:
    """The scenario's hosts as network namespaces on one switch. ``with Lab(scenario) as lab:`` builds
    it (clearing a lab left behind) and takes it down again."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.hosts = {h.name: h for h in plan(scenario)}
        self.netem = False
        self.notes: list[str] = []

    @staticmethod
    def check() -> None:
        """LabError unless this machine can build a lab (Linux, ip and tc, root)."""
        missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
        if missing:
            raise LabError(f"the lab needs {' and '.join(missing)} (Debian/Ubuntu: apt-get install iproute2)")
        probe = _run(["ip", "netns", "add", f"{PREFIX}-root-probe"], check=False)
        if probe.returncode != 0:
            raise LabError(f"the lab needs root (network namespaces): {probe.stderr.strip()}")
        _run(["ip", "netns", "del", f"{PREFIX}-root-probe"], check=False)

    def up(self, *, keep: bool = False) -> "Lab":
        """Build the lab. One lab per machine: another one that is up (its owner alive, or left up on
        purpose by ``tsodso lab up``) is a LabError; one a crashed run left behind is cleared first.
        ``keep``: the lab outlives this process (until ``tsodso lab down``)."""
        self.check()
        owner = _owner()
        if owner is not None:
            raise LabError(
                f"a lab is already up on this machine ({owner}): one at a time; take it down with 'tsodso lab down'"
            )
        self.down()
        LOCK.write_text("kept" if keep else _me())
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        self.netem = kernel_has_netem()
        if not self.netem and any(
            h.link.delay_ms or h.link.jitter_ms or h.link.loss_percent for h in self.hosts.values()
        ):
            self.notes.append(
                "this kernel has no netem ('tc qdisc add ... netem': Specified qdisc kind is unknown): the lab's "
                "delay, jitter and loss are applied per message by the gateways (application-level link conditions)"
            )
        prefix = ipaddress.IPv4Network(self.scenario.lab.subnet).prefixlen
        _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "addr", "add", f"{switch_address(self.scenario)}/{prefix}", "dev", BRIDGE])
        _run(["ip", "link", "set", BRIDGE, "up"])
        for host in self.hosts.values():
            ns = ["ip", "netns", "exec", host.netns]
            _run(["ip", "netns", "add", host.netns])
            _run(["ip", "link", "add", host.veth, "type", "veth", "peer", "name", "eth0", "netns", host.netns])
            _run(["ip", "link", "set", host.veth, "master", BRIDGE, "up"])
            _run([*ns, "ip", "addr", "add", f"{host.ip}/{prefix}", "dev", "eth0"])
            _run([*ns, "ip", "link", "set", "eth0", "up"])
            _run([*ns, "ip", "link", "set", "lo", "up"])
            if cmd := shaping(host.link, host.veth, self.netem):  # towards the host
                _run(cmd)
            if cmd := shaping(host.link, "eth0", self.netem):  # from the host
                _run([*ns, *cmd])

    @staticmethod
    def down() -> None:
        """Remove every host and the switch of a lab on this machine (this one or one left behind)."""
        LOCK.unlink(missing_ok=True)
        # the hosts' links first, each at once with its peer: deleting a namespace frees the links in it
        # later, in the kernel's own time, and a lab built meanwhile would find their names taken
        for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
            fields = line.split(": ")
            name = fields[1].split("@")[0] if len(fields) > 1 else ""
            if name.startswith(PREFIX) and name != BRIDGE:
                _run(["ip", "link", "del", name], check=False)
        listed = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
        for line in listed:
            name = line.split(" ")[0]
            if name.startswith(f"{PREFIX}-"):
                _run(["ip", "netns", "del", name], check=False)
        _run(["ip", "link", "del", BRIDGE], check=False)

    def command(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` to run on ``host`` ('broker' or 'role/id')."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def set_link(self, host: str, up: bool) -> None:
        """Take a host's link down (a partition: its packets go nowhere) or bring it back."""
        _run(["ip", "link", "set", self.hosts[host].veth, "up" if up else "down"])

    def queue_stats(self, host: str) -> str:
        """``tc -s qdisc`` of the host's link, both directions (what was sent, dropped, queued)."""
        towards = _run(["tc", "-s", "qdisc", "show", "dev", self.hosts[host].veth], check=False).stdout
        away = _run(self.command(host, ["tc", "-s", "qdisc", "show", "dev", "eth0"]), check=False).stdout
        return f"towards {host}:\n{towards}from {host}:\n{away}"

    def __enter__(self) -> "Lab":
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


class Partitions(threading.Thread):
    """Takes hosts' links down and up at the scenario's instants, once the run's clock is known
    (``wall_origin()`` returns the wall time of the scenario's start, or None before the run starts).
    Each change is written to ``log`` (JSON lines)."""

    def __init__(self, lab: Lab, speed: float, wall_origin: Callable[[], float | None], log: Path):
        super().__init__(daemon=True, name="lab-partitions")
        self.lab, self.speed, self.wall_origin, self.log = lab, speed, wall_origin, log
        self.stopped = threading.Event()
        self.events = sorted(
            (t, host, up)
            for host, link in lab.scenario.lab.hosts.items()
            for t1, t2 in link.partitions
            for t, up in ((t1, False), (t2, True))
        )

    def run(self) -> None:
        origin = None
        while origin is None and not self.stopped.wait(0.05):
            origin = self.wall_origin()
        for at, host, up in self.events:
            if origin is None or self.stopped.wait(max(0.0, self._wall(at, origin) - time.time())):
                break
            self.lab.set_link(host, up)
            with self.log.open("a") as f:
                row = {
                    "host": host,
                    "link": "up" if up else "down",
                    "scenario_time": at.isoformat(),
                    "wall": time.time(),
                }
                f.write(json.dumps(row) + "\n")
        if self.stopped.is_set():  # the run ended first: no link stays down
            for _, host, _ in self.events:
                try:
                    self.lab.set_link(host, True)
                except LabError:
                    pass  # (the lab is already down)

    def _wall(self, at: datetime, origin: float) -> float:
        return origin + (at - self.lab.scenario.start).total_seconds() / self.speed

    def stop(self) -> None:
        self.stopped.set()
        self.join(5)
