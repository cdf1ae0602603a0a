"""Start a broker as a child process (or use one that runs elsewhere) and know its URL.

with start_broker("embedded") as b:      # broker.embedded on a free loopback port
    print(b.url)                         # mqtt://127.0.0.1:40123?protocol=3.1.1
with start_broker("mosquitto") as b:     # mosquitto, the project's configuration
    b.restart()                          # SIGTERM (saves persistent sessions), start again
start_broker("nats")                     # nats-server with JetStream and MQTT (3.1.1)
with start_broker("nats", nodes=3) as c: # a 3-node cluster: c.url names every node; c.members[0].stop(hard=True)
start_broker("mqtt://host:1883")         # nothing to start
"""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tsodso.broker import mosquitto, nats


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_problem(host: str, port: int) -> str | None:
    """Why a broker cannot listen on ``host:port`` (in use, or not an address of this host), or None."""
    with socket.socket() as s:
        s.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as the brokers bind: a closed port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as exc:
            why = "in use (another broker?)" if exc.errno == errno.EADDRINUSE else exc.strerror
            return f"cannot listen on {host}:{port}: {why}; choose another --port, or 0 for a free one"
    return None


def answer_problem(url: str, timeout_s: float = 3.0) -> str | None:
    """Why the broker at ``url`` cannot be reached (no node accepts a TCP connection within
    ``timeout_s``), or None: for a tool about to measure it, which has no use for waiting. ValueError:
    ``url`` is not a broker URL."""
    from tsodso.gateway.connection import BrokerSpec

    spec = BrokerSpec.parse(url)
    problems = []
    for host, port in spec.nodes:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return None
        except OSError as exc:
            problems.append(f"{host}:{port} ({exc.strerror or type(exc).__name__})")
    return f"no broker answers at {', '.join(problems)}"


def wait_for_port(
    host: str, port: int, timeout_s: float = 10.0, proc: subprocess.Popen | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerExited(
                f"the broker exited with code {proc.returncode} before listening on {host}:{port}{last_words(log)}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


class BrokerError(ValueError):
    """A broker the user named that the testbed cannot start: the message says which and what is valid."""


class BrokerExited(BrokerError):
    """A broker process the testbed started ended while it was starting; the message gives its last line."""


def last_words(log: Path | None) -> str:
    """': <the last line a broker wrote to its log>', or '' where there is none."""
    try:
        lines = log.read_text(errors="replace").strip().splitlines() if log is not None else []
    except OSError:
        return ""
    return f": {lines[-1].strip()[:300]}" if lines else ""


@dataclass
class RunningBroker:
    """A broker and how to reach it. ``command`` is empty for a broker the testbed did not start."""

    kind: str
    url: str
    host: str = "127.0.0.1"
    port: int = 1883
    command: list[str] = field(default_factory=list)
    data_dir: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self) -> "RunningBroker":
        if self.command and (self.proc is None or self.proc.poll() is not None):
            self.proc = subprocess.Popen(
                self.command, stdout=_out(self), stderr=subprocess.STDOUT, start_new_session=True
            )
            wait_for_port(self.host, self.port, proc=self.proc, log=self.log_file)
        return self

    @property
    def log_file(self) -> Path | None:
        """Where the broker's own output goes (its data directory's ``<kind>.out``)."""
        return self.data_dir / f"{self.kind}.out" if self.data_dir else None

    def stop(self, *, hard: bool = False) -> None:
        """Stop the broker: SIGTERM (Mosquitto saves its persistent sessions) or SIGKILL."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, *, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()

    def __enter__(self) -> "RunningBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class RunningCluster(RunningBroker):
    """Brokers that form one cluster (``members``, each a node on its own port): started together and
    ready only when a QoS 1 message published on each node reaches a subscriber on another (a cold
    NATS cluster accepts MQTT connections before its JetStream is ready, and lost early messages)."""

    members: list[RunningBroker] = field(default_factory=list)
    ready_timeout_s: float = 60.0
    probe_login: tuple[str, str] | None = None  # (user, password) of the readiness probe, where needed

    def start(self) -> "RunningCluster":
        for member in self.members:
            if member.proc is None or member.proc.poll() is not None:
                member.proc = subprocess.Popen(
                    member.command, stdout=_out(member), stderr=subprocess.STDOUT, start_new_session=True
                )
        for member in self.members:
            try:
                wait_for_port(member.host, member.port, proc=member.proc, log=member.log_file)
            except BrokerExited:
                self.exited()  # the same, naming the node
                raise
        wait_until_delivering(self.url, self.ready_timeout_s, self.probe_login, check=self.exited)
        return self

    def exited(self) -> None:
        """BrokerExited naming the first node whose process has ended (a cluster short of a node that
        never started is not one to wait for)."""
        for i, member in enumerate(self.members):
            if member.proc is not None and member.proc.poll() is not None:
                raise BrokerExited(
                    f"nats node {i + 1} of {len(self.members)} ({member.host}:{member.port}) exited with code "
                    f"{member.proc.returncode}{last_words(member.log_file)}"
                )

    def stop(self, *, hard: bool = False) -> None:
        for member in self.members:
            member.stop(hard=hard)


def _out(broker: RunningBroker) -> Any:
    return (
        open(broker.data_dir / f"{broker.kind}.out", "ab") if broker.data_dir else subprocess.DEVNULL
    )  # (the broker process holds it)


def wait_until_delivering(
    url: str, timeout_s: float, login: tuple[str, str] | None = None, check: Callable[[], None] | None = None
) -> None:
    """Return once a QoS 1 message published on each node of ``url`` reaches a subscriber on the next
    node (or the same one, for a single node); BrokerError after ``timeout_s``. ``check``, called between
    tries, raises to end the wait early (a node that died)."""
    import asyncio
    import uuid

    from tsodso.gateway.connection import BrokerSpec
    from tsodso.gateway.mqtt import Subscriber

    spec = BrokerSpec.parse(url)
    if login is not None:
        spec = spec.with_credentials(*login)
    nodes = spec.nodes

    async def round_trip(i: int) -> None:
        at = replace(spec, host=nodes[i][0], port=nodes[i][1], other_nodes=())
        nxt = replace(spec, host=nodes[(i + 1) % len(nodes)][0], port=nodes[(i + 1) % len(nodes)][1], other_nodes=())
        topic = f"{nats.READY_PREFIX}/{uuid.uuid4().hex[:8]}"
        async with Subscriber(nxt, f"ready-sub-{i}-{uuid.uuid4().hex[:6]}") as sub:
            await sub.subscribe(topic, qos=1)
            async with Subscriber(at, f"ready-pub-{i}-{uuid.uuid4().hex[:6]}") as pub:
                await pub.publish(topic, b"ready", qos=1)
                await asyncio.wait_for(sub.queue.get(), 3.0)

    async def probe() -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(range(len(nodes)))
        last = "no answer"
        while pending:
            if check is not None:
                check()
            try:
                await asyncio.wait_for(round_trip(pending[0]), max(0.1, min(10.0, deadline - time.monotonic())))
                pending.pop(0)
                continue
            except (OSError, TimeoutError, ConnectionError) as exc:
                last = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                host, port = nodes[pending[0]]
                raise BrokerError(
                    f"the cluster {spec.url} does not deliver through {host}:{port} after {timeout_s:g} s ({last})"
                )
            await asyncio.sleep(0.2)

    asyncio.run(probe())


def start_broker(
    kind: str,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    data_dir: Path | None = None,
    auth: str | None = None,
    nodes: int = 1,
    probe_login: tuple[str, str] | None = None,
    prefix: list[str] | None = None,
    placement: list[tuple[str, list[str]]] | None = None,
) -> RunningBroker:
    """Start ``embedded``, ``mosquitto`` or ``nats`` on ``port`` (a free one by default; ``nats`` with
    ``nodes`` > 1: a cluster on ``port``, ``port`` + 1, ..., whose readiness probe logs in as
    ``probe_login`` where ``auth`` lets only known users in), name a fresh in-memory bus (``memory``:
    no broker, ``gateway.memory``), or wrap a URL. ``prefix``: what the broker's command runs under
    (``ip netns exec HOST``: a host of the network lab, ``testbed.lab``); ``placement``: a cluster's
    nodes each on a host of its own, (address, prefix) per node."""
    if kind == "memory":
        import uuid

        return RunningBroker("memory", f"memory://run-{uuid.uuid4().hex[:8]}", host="memory", port=0)
    if "://" in kind:
        from tsodso.gateway.connection import BrokerSpec

        try:
            spec = BrokerSpec.parse(kind)
        except ValueError as exc:
            raise BrokerError(str(exc)) from None
        return RunningBroker("url", kind, spec.host, spec.port)
    if nodes != 1 and kind != "nats":
        raise BrokerError(f"{kind}: only nats runs as a cluster here (nodes={nodes}); use nats or nodes=1")
    if not 1 <= nodes <= 9:
        raise BrokerError(f"nats: {nodes} nodes; a cluster here has 1 to 9 (3 survives the loss of one)")
    if port and not prefix and not placement and (problem := port_problem(host, port)):
        raise BrokerError(f"{kind}: {problem}")
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"tsodso-{kind}-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    if nodes > 1:
        return _start_nats_cluster(nodes, port, host, data_dir, auth, probe_login, placement)
    port = port or free_port(host)
    if kind == "embedded":
        cmd = [
            sys.executable,
            "-m",
            "tsodso.broker.embedded",
            "--host",
            host,
            "--port",
            str(port),
            "--store",
            str(data_dir / "embedded-broker.sqlite"),
        ]
        url = f"mqtt://{host}:{port}?protocol=3.1.1"
    elif kind == "mosquitto":
        conf = mosquitto.write_config(data_dir, port, host=host, auth=auth)
        cmd = [mosquitto.binary(), "-c", str(conf)]
        url = f"mqtt://{host}:{port}"
    elif kind == "nats":
        conf = nats.write_config(data_dir, port, host=host, auth=auth)
        cmd = [nats.binary(), "-c", str(conf)]
        url = f"mqtt://{host}:{port}?protocol=3.1.1"
    else:
        raise BrokerError(
            f"unknown broker {kind!r}: use embedded, mosquitto, nats, memory or an mqtt[s]://host:port URL"
        )
    return RunningBroker(kind, url, host, port, [*(prefix or []), *cmd], data_dir).start()


def _start_nats_cluster(
    nodes: int,
    port: int | None,
    host: str,
    data_dir: Path,
    auth: str | None,
    probe_login: tuple[str, str] | None,
    placement: list[tuple[str, list[str]]] | None,
) -> RunningCluster:
    """Start the cluster; on free ports of its own choosing (no ``port``), again on other ones where a node
    found its port taken by then (a port is free when chosen, and any connection may take it before the
    node listens: seen here)."""
    tries = 3 if not port and placement is None else 1
    for attempt in range(1, tries + 1):
        try:
            return _start_nats_nodes(nodes, port or free_port(host), host, data_dir, auth, probe_login, placement)
        except BrokerExited as exc:
            if attempt == tries or "address already in use" not in str(exc):
                raise
            for store in data_dir.glob("node*/jetstream"):
                shutil.rmtree(store, ignore_errors=True)  # a JetStream cluster that never formed
    raise AssertionError("unreachable")


def _start_nats_nodes(
    nodes: int,
    port: int,
    host: str,
    data_dir: Path,
    auth: str | None,
    probe_login: tuple[str, str] | None,
    placement: list[tuple[str, list[str]]] | None,
) -> RunningCluster:
    if placement is not None:  # each node on a host of its own (the lab): the same ports on every host
        if len(placement) != nodes:
            raise BrokerError(f"nats: {nodes} nodes placed on {len(placement)} hosts")
        mqtt = [(node_host, port) for node_host, _ in placement]
        routes = [(node_host, 6222) for node_host, _ in placement]
        prefixes = [prefix for _, prefix in placement]
    else:
        ports = [port] + [port + i if port + i < 65536 else free_port(host) for i in range(1, nodes)]
        for p in ports[1:]:
            if problem := port_problem(host, p):
                raise BrokerError(f"nats node on {p}: {problem}")
        mqtt = [(host, p) for p in ports]
        routes = [(host, free_port(host)) for _ in range(nodes)]
        prefixes = [[] for _ in range(nodes)]
    members = []
    for i, (node_host, node_port) in enumerate(mqtt):
        conf = nats.write_cluster_config(data_dir, i, (node_host, node_port), routes, auth=auth)
        command = [*prefixes[i], nats.binary(), "-c", str(conf)]
        members.append(RunningBroker("nats", "", node_host, node_port, command, conf.parent))
    url = "mqtt://" + ",".join(f"{h}:{p}" for h, p in mqtt) + "?protocol=3.1.1"
    cluster = RunningCluster("nats", url, host, port, [], data_dir, members=members)
    cluster.probe_login = probe_login
    try:
        return cluster.start()
    except BaseException:
        cluster.stop(hard=True)
        raise


if os.name != "posix":  # pragma: no cover
    raise ImportError("the broker launcher needs a POSIX system")
