"""The secured multi-process deployment in one command: ``tsodso up SCENARIO [--tls]``.

An identity per actor (``testbed.security``; kept in ``OUT/secrets`` and reused by the next run),
Mosquitto with the access list and per-actor passwords (or, with ``tls``, mutual TLS with the
deployment's CA), and every actor of the scenario in its own OS process with the same command a user
or ``docker-compose.yml`` runs (``tsodso actor ROLE --id ID --secrets ...``). Returns the run's
summary; the run directory is ``OUT/run`` (a new one each time), each process's output
``OUT/<role>-<id>.log``.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from tsodso.broker import start_broker
from tsodso.broker.acl import auth_lines, tls_auth_lines
from tsodso.testbed.scenario import load_scenario
from tsodso.testbed.security import init


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
) -> dict[str, Any]:
    scenario = load_scenario(scenario_file, coordination=coordination)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "run", ignore_errors=True)  # a new run: nothing of the last one in its log
    secrets = out / "secrets"
    if not (secrets / "public-keys.json").exists():
        init(secrets, scenario)
    auth = tls_auth_lines(secrets / "mosquitto", secrets / "tls") if tls else auth_lines(secrets / "mosquitto")
    with start_broker("mosquitto", data_dir=out / "broker", auth=auth) as broker:
        url = broker.url.replace("mqtt://", "mqtts://") if tls else broker.url
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
