"""Fixtures: real brokers on real sockets.

``broker`` runs every test that takes it twice: on the embedded broker (broker.embedded, started here on a
free port) and on Mosquitto (the installed binary with the project's configuration, started here on
a free port). When the mosquitto binary is missing those runs are skipped with the reason, unless
TSODSO_REQUIRE_MOSQUITTO=1 (CI sets it), which turns the skip into a failure.
"""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tsodso.broker import RunningBroker, start_broker
from tsodso.broker.mosquitto import MosquittoMissing, binary
from tsodso.gateway.loop import new_event_loop

REQUIRE_MOSQUITTO = os.environ.get("TSODSO_REQUIRE_MOSQUITTO") == "1"


# Tests that run a scenario across processes or a conformance session on the wall clock: they take
# tens of seconds each, mostly waiting. They start first, so that parallel workers (make test) are
# not left with one of them at the end.
LONG_RUNNING = (
    "tests/test_conformance.py",
    "tests/test_recovery.py",
    "tests/test_schemes.py",
    "tests/test_compose.py",
    "tests/test_hostile.py",
    "tests/test_cluster.py",
    "tests/test_lab.py",
)


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Every async test runs on the loop every tsodso process runs on (writes batched per turn)."""
    return {"batching": new_event_loop}


LOST_GROUP = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)  # after pytest-xdist's worker has marked the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(LONG_RUNNING))
    mark_lost_groups(config, items)


def mark_lost_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Fail every grouped test of a ``--dist loadgroup`` run whose ``xdist_group`` marks are ignored.

    The groups keep tests that load every core, or start a cluster or a lab, off each other's
    workers. pytest-xdist marks a grouped test by appending ``@group`` to its node id on the worker;
    pytest 9.2's structured node ids drop that suffix (pytest-dev/pytest-xdist#1386), and the tests
    would run side by side and fail on a busy host for no reason of their own."""
    if not getattr(config, "workerinput", None) or not config.getvalue("loadgroup"):
        return
    for item in items:
        if item.get_closest_marker("xdist_group") and "@" not in item.nodeid:
            item.stash[LOST_GROUP] = (
                f"--dist loadgroup ignored this test's xdist_group: pytest {pytest.__version__} with this "
                "pytest-xdist does not keep a group on one worker (pytest-dev/pytest-xdist#1386); "
                "install the versions pyproject.toml pins"
            )


def pytest_runtest_setup(item: pytest.Item) -> None:
    if LOST_GROUP in item.stash:
        pytest.fail(item.stash[LOST_GROUP], pytrace=False)


def mosquitto_or_skip() -> None:
    try:
        binary()
    except MosquittoMissing as exc:
        if REQUIRE_MOSQUITTO:
            pytest.fail(f"TSODSO_REQUIRE_MOSQUITTO=1 but {exc}")
        pytest.skip(f"{exc}; set TSODSO_REQUIRE_MOSQUITTO=1 to make this a failure")


def _start(kind: str, tmp: Path) -> RunningBroker:
    if kind == "mosquitto":
        mosquitto_or_skip()
    return start_broker(kind, data_dir=tmp / kind)


@pytest.fixture(scope="session", params=["embedded", "mosquitto"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningBroker]:
    """A broker shared by the session's tests (each test uses its own actor ids)."""
    running = _start(request.param, tmp_path_factory.mktemp("brokers"))
    yield running
    running.stop()


@pytest.fixture
def own_mosquitto(tmp_path: Path) -> Iterator[RunningBroker]:
    """A Mosquitto of this test alone (for restarts and access lists)."""
    mosquitto_or_skip()
    running = start_broker("mosquitto", data_dir=tmp_path / "mosquitto")
    yield running
    running.stop()


@pytest.fixture
def secured_mosquitto(tmp_path: Path) -> Iterator[tuple[RunningBroker, Path]]:
    """A Mosquitto of this test alone, secured as ``tsodso secure init`` makes a deployment: one
    identity per actor of the reference scenario (signing key, own broker password), the access list
    from the rights table. Yields the broker and the secrets directory."""
    from tsodso.broker.acl import auth_lines
    from tsodso.testbed.scenario import load_scenario
    from tsodso.testbed.security import init

    mosquitto_or_skip()
    secrets = tmp_path / "secrets"
    init(secrets, load_scenario(Path(__file__).resolve().parents[1] / "scenarios" / "nl-afrr-congestion.yaml"))
    running = start_broker("mosquitto", data_dir=tmp_path / "mosquitto", auth=auth_lines(secrets / "mosquitto"))
    yield running, secrets
    running.stop()


@pytest.fixture
def own_broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningBroker]:
    """A broker of this test alone, of the kind named by the test's ``kind`` parameter."""
    running = _start(request.param, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def uid() -> str:
    """A short suffix that keeps actor ids (and so client ids, sessions, topics) apart between tests."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True)
def _logs_to_stderr():
    """Each test starts with gateway warnings going to stderr (a run may have pointed them at a file)."""
    import logging

    from tsodso.gateway.logs import configure_logging

    configure_logging(level=logging.WARNING)
    yield


def run_processes(commands: dict[str, list[str]], cwd: Path, timeout_s: float = 180) -> None:
    """Start every ``tsodso`` command (argv after ``tsodso``) as its own OS process at once and
    wait for all of them; fail with the output of any that exits non-zero."""
    procs = []
    try:
        for name, argv in commands.items():
            procs.append(
                (
                    name,
                    subprocess.Popen(
                        [sys.executable, "-m", "tsodso", *argv],
                        cwd=cwd,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    ),
                )
            )
        for name, proc in procs:
            output, _ = proc.communicate(timeout=timeout_s)
            assert proc.returncode == 0, f"{name} failed:\n{output.decode()[-3000:]}"
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()


def short_scenario_file(directory: Path, minutes: float, source: str = "scenarios/nl-afrr-congestion.yaml") -> Path:
    """The scenario file ``source`` with its end ``minutes`` after its start, the emergencies and faults
    after that end left out and a 10-s (wall) MOL validation window, written to ``directory``: a
    multi-process run of the reference case that reaches the MOL validation and the activation up to
    the DSO's limit, in less wall time. It starts two minutes earlier: the BSP prequalifies and bids
    between the run start and the first ISP's gate closure, 1 min of scenario time in the reference case
    (2.4 s of wall time at 25x, which a busy host starting three processes has missed), 3 min here."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / source).read_text())
    end = data["start"] + timedelta(minutes=minutes)
    data["end"] = end
    start = data["start"]
    data = _moved(data, start, start - timedelta(minutes=2))  # every profile's first point moves with it
    # the DSO's validation window is wall time: a deadline here, not what these tests measure (a busy host
    # starting many processes at once can take more than the scenario's 2 s to answer the first list)
    data["tso"]["mol_timeout_s"] = 10
    data["tso"]["emergencies"] = [e for e in data["tso"].get("emergencies", []) if e["at"] < end]
    for dso in data["dsos"]:
        dso["faults"] = [f for f in dso.get("faults", []) if f["at"] < end]
    path = directory / f"short-{minutes:g}min.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _moved(value, old, new):
    """``value`` with every occurrence of the instant ``old`` replaced by ``new``."""
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    return new if value == old else value


def assert_nothing_refused_but_expired(exchange_db: Path) -> None:
    """No message was rejected or refused on arrival, but for a setpoint that a stall of a busy host made
    arrive after its validity (counted and bounded by :func:`assert_no_setpoint_lost`): every message signed
    and checked, none refused for what it is or who sent it."""
    import sqlite3

    db = sqlite3.connect(exchange_db)
    refused = db.execute(
        "SELECT actor, type, reason FROM exchange WHERE outcome IN ('rejected', 'refused')"
        " AND NOT (type = 'delta_setpoint' AND reason LIKE 'expired:%')"
    ).fetchall()
    db.close()
    assert refused == [], refused


def assert_no_setpoint_lost(summary: dict) -> None:
    """Every delta setpoint the TSO sent reached its BSP (QoS 1: nothing is lost). In an accelerated run
    a setpoint lives one period of wall time (80 ms at 50x), so a stall of the host longer than that
    makes one arrive expired, refused with the reason; that is host noise, not a testbed fault, and
    must stay rare (at most 1 % of them). No timing is asserted beyond that."""
    from tsodso.testbed.summary import setpoints_text

    assert summary["setpoints_lost"] == 0, setpoints_text(summary)
    assert summary["setpoints_expired"] <= max(1, 0.01 * summary["setpoints_sent"]), setpoints_text(summary)
    assert summary["setpoints_missed"] == summary["setpoints_expired"], setpoints_text(summary)
