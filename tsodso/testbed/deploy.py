"""The secured multi-process deployment in one command: ``tsodso up SCENARIO [--tls]``.

An identity per actor (``testbed.security``; kept in ``OUT/secrets`` and reused by the next run),
Mosquitto with the access list and per-actor passwords (or, with ``tls``, mutual TLS with the
deployment's CA), and every actor of the scenario in its own OS process with the same command a user
or ``docker-compose.yml`` runs (``tsodso actor ROLE --id ID --secrets ...``). Returns the run's
summary; the run directory is ``OUT/run`` (a new one each time), each process's output
``OUT/<role>-<id>.log``.

With ``lab``, every actor runs on its own host of the network lab and Mosquitto on another
(``testbed.lab``: network namespaces on one switch, the scenario's rate limits, delays and
partitions on their links; the broker Mosquitto on its host, or a NATS cluster with a node on each of
``lab.broker_nodes`` hosts); the lab is taken down after the run. Its link changes go to
``OUT/run/lab.jsonl``, what its shaped links carried to ``OUT/run/lab-queues.txt``; what it could
not apply as asked is added to the summary's notes.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tsodso.broker import start_broker
from tsodso.broker.acl import auth_lines, tls_auth_lines
from tsodso.testbed.lab import Lab, Partitions, message_level_links
from tsodso.testbed.scenario import load_scenario
from tsodso.testbed.security import OBSERVER, init, load_login


class DeployError(RuntimeError):
    """An actor process failed: the message names it and ends with its last output."""


def actors_of(scenario: Any) -> list[tuple[str, str]]:
    """(role, id) of every actor process the scenario's scheme needs."""
    return scenario.actors()


def up(
    scenario_file: Path,
    out: Path,
    *,
    speed: float = 25.0,
    tls: bool = False,
    coordination: str | None = None,
    timeout_s: float = 3600.0,
    lab: bool = False,
) -> dict[str, Any]:
    scenario = load_scenario(scenario_file, coordination=coordination)
    if lab and tls:
        raise DeployError("--lab with --tls is not built (the broker's certificate names no lab address); drop --tls")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "run", ignore_errors=True)  # a new run: nothing of the last one in its log
    (out / "run").mkdir()
    secrets = out / "secrets"
    if not (secrets / "public-keys.json").exists():
        init(secrets, scenario)
    auth = tls_auth_lines(secrets / "mosquitto", secrets / "tls") if tls else auth_lines(secrets / "mosquitto")
    if not lab:
        with start_broker("mosquitto", data_dir=out / "broker", auth=auth) as broker:
            url = broker.url.replace("mqtt://", "mqtts://") if tls else broker.url
            return _run_actors(scenario_file, scenario, out, secrets, url, speed, coordination, timeout_s)
    with Lab(scenario) as network:
        per_message = [] if network.netem else message_level_links(scenario)
        if per_message:  # no netem here: the lab's delays, per message, in the actors' scenario
            scenario_file = _with_links(scenario_file, per_message, out / "run" / "lab-scenario.yaml")
        nodes = scenario.lab.broker_hosts
        if len(nodes) == 1:
            broker_host = network.hosts[nodes[0]]
            running = start_broker(
                "mosquitto",
                host=broker_host.ip,
                port=1883,
                data_dir=out / "broker",
                auth=auth,
                prefix=network.command(nodes[0], []),
            )
        else:  # a NATS cluster, a node per host, the same per-actor users (tsodso secure init)
            running = start_broker(
                "nats",
                nodes=len(nodes),
                port=1883,
                data_dir=out / "broker",
                auth=(secrets / "nats" / "authorization.conf").read_text(),
                probe_login=load_login(secrets, OBSERVER),
                placement=[(network.hosts[n].ip, network.command(n, [])) for n in nodes],
            )
        with running as broker:
            tso_run = out / "run" / f"run-tso-{scenario.tso.id}.json"
            partitions = Partitions(network, speed, lambda: _wall_origin(tso_run), out / "run" / "lab.jsonl")
            partitions.start()
            try:
                summary = _run_actors(
                    scenario_file, scenario, out, secrets, broker.url, speed, coordination, timeout_s, network
                )
            finally:
                partitions.stop()
                shaped = [
                    h for h in network.hosts.values() if h.link.rate_kbit or h.link.delay_ms or h.link.loss_percent
                ]
                if shaped:  # what each shaped link carried, queued and dropped (tc -s qdisc)
                    (out / "run" / "lab-queues.txt").write_text("".join(network.queue_stats(h.name) for h in shaped))
    if network.notes:
        summary["notes"] = [*summary.get("notes", []), *network.notes]
        (out / "run" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _wall_origin(run_file: Path) -> float | None:
    try:
        return float(json.loads(run_file.read_text())["wall_origin"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def _with_links(scenario_file: Path, links: list[Any], path: Path) -> Path:
    """A copy of the scenario file with ``links`` before its own link conditions."""
    data = yaml.safe_load(scenario_file.read_text())
    data["links"] = [link.model_dump(mode="json") for link in links] + list(data.get("links") or [])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run_actors(
    scenario_file: Path,
    scenario: Any,
    out: Path,
    secrets: Path,
    url: str,
    speed: float,
    coordination: str | None,
    timeout_s: float,
    network: Lab | None = None,
) -> dict[str, Any]:
    procs = {}
    for role, ident in actors_of(scenario):
        argv = [
            sys.executable,
            "-m",
            "tsodso",
            "actor",
            role,
            "--id",
            ident,
            "--scenario",
            str(scenario_file),
            "--broker",
            url,
            "--secrets",
            str(secrets),
            "--speed",
            str(speed),
            "--out",
            str(out / "run"),
            *(["--coordination", coordination] if coordination else []),
        ]
        if network is not None:
            argv = network.command(f"{role}/{ident}", argv)
        log = out / f"{role}-{ident}.log"
        procs[(role, ident)] = (subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT), log)
    try:
        for (role, ident), (proc, log) in procs.items():
            if proc.wait(timeout_s) != 0:
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                raise DeployError(
                    f"{role}/{ident} exited with {proc.returncode}: {' | '.join(tail)} (all of it: {log})"
                )
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
    return json.loads((out / "run" / "summary.json").read_text())
