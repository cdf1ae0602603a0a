"""Start a broker as a child process (or use one that runs elsewhere) and know its URL.

with start_broker("embedded") as b:      # broker.embedded on a free loopback port
    print(b.url)                         # mqtt://127.0.0.1:40123?protocol=3.1.1
with start_broker("mosquitto") as b:     # mosquitto, the project's configuration
    b.restart()                          # SIGTERM (saves persistent sessions), start again
start_broker("nats")                     # nats-server with JetStream and MQTT (3.1.1)
start_broker("mqtt://host:1883")         # nothing to start
"""

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

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


def wait_for_port(host: str, port: int, timeout_s: float = 10.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"the broker exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


class BrokerError(ValueError):
    """A broker the user named that the testbed cannot start: the message says which and what is valid."""


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
            log = open(self.data_dir / f"{self.kind}.out", "ab") if self.data_dir else subprocess.DEVNULL  # noqa: SIM115 (the broker process holds it)
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            wait_for_port(self.host, self.port, proc=self.proc)
        return self

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


def start_broker(
    kind: str,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    data_dir: Path | None = None,
    auth: str | None = None,
) -> RunningBroker:
    """Start ``embedded`` or ``mosquitto`` on ``port`` (a free one by default), name a fresh in-memory
    bus (``memory``: no broker, ``gateway.memory``), or wrap a URL."""
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
    if port and (problem := port_problem(host, port)):
        raise BrokerError(f"{kind}: {problem}")
    port = port or free_port(host)
    data_dir = Path(data_dir or tempfile.mkdtemp(prefix=f"tsodso-{kind}-"))
    data_dir.mkdir(parents=True, exist_ok=True)
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
    return RunningBroker(kind, url, host, port, cmd, data_dir).start()


if os.name != "posix":  # pragma: no cover
    raise ImportError("the broker launcher needs a POSIX system")
