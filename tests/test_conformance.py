"""Conformance: the rules, the document and the checks agree; the reference emulators (each its own OS
process) pass their suites on the embedded broker and on Mosquitto; every fault mode fails exactly
the rules it is meant to break; a device written with plain paho-mqtt passes the BSP suite."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tsodso.actors.config import Scenario
from tsodso.gateway import BrokerSpec
from tsodso.testbed.cli import app
from tsodso.testbed.conformance import RULES, run_suite
from tsodso.testbed.conformance.checks import CHECKS
from tsodso.testbed.conformance.rules import markdown
from tsodso.testbed.emulate import FAULTS
from tsodso.testbed.scenario import dump_scenario, load_scenario

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = load_scenario(ROOT / "scenarios" / "nl-afrr-congestion.yaml")
SPEED = 10.0  # emulators step per setpoint: a 4-s cycle every 400 ms (a busy 2-core host answers within it)
TSO_SPEED = 40.0  # a TSO session is the whole 16-min reference scenario: 24 s at 40x
ALWAYS_SKIPPED = {"PR-020"}  # the device's death is judged only when it leaves mid-session


@contextmanager
def device(*argv: str):
    """A device in its own OS process, stopped (SIGTERM) at the end. Its output goes to a file (a pipe
    nobody reads would stop a talkative device once full); ``output(proc)`` reads its tail."""
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="device-", suffix=".log") as log:
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        proc.log_path = log.name  # type: ignore[attr-defined]
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def output(proc) -> str:
    """The last lines a device printed (for a failure's message)."""
    return Path(proc.log_path).read_text(errors="replace")[-3000:]


async def on_the_bus(*procs) -> None:
    """Wait until each emulator says it is on the bus, waiting for its session (a deadline only: a busy
    host can take long to start Python processes); a device that died says why."""
    deadline = time.monotonic() + 120
    waiting = list(procs)
    while waiting and time.monotonic() < deadline:
        for proc in list(waiting):
            assert proc.poll() is None, f"the device exited ({proc.returncode}):\n{output(proc)}"
            if ": waiting for " in Path(proc.log_path).read_text(errors="replace"):
                waiting.remove(proc)
        await asyncio.sleep(0.05)
    assert not waiting, f"a device never got on the bus:\n{output(waiting[0])}"


def emulator(
    role: str,
    device_id: str,
    url: str,
    fault: str | None = None,
    speed: float = SPEED,
    scenario: Path | None = None,
    public_key_out: Path | None = None,
):
    argv = ["-m", "tsodso", "emulate", role, "--device-id", device_id, "--broker", url, "--speed", str(speed)]
    return device(
        *argv,
        *(["--fault", fault] if fault else []),
        *(["--scenario", str(scenario)] if scenario else []),
        *(["--public-key-out", str(public_key_out)] if public_key_out else []),
    )


def device_key(path: Path, party: str):
    """The device's public key, once the device has written it."""
    from tsodso.schemas.signing import load_public_keys

    deadline = time.monotonic() + 120  # a deadline only: a busy host can take long to start a Python process
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return load_public_keys(path)[party]


def own_peers(tmp_path: Path, suffix: str) -> tuple[Scenario, Path]:
    """The reference scenario with its DSO and BSP renamed (a TSO session of its own on a shared broker),
    starting two minutes earlier: a TSO session's suite prequalifies and bids between the run start and the
    first ISP's gate closure, which at 40x is 1.5 s of wall time in the reference scenario, 4.5 s here."""
    data = SCENARIO.model_dump(mode="json")
    data["start"] = (SCENARIO.start - timedelta(minutes=2)).isoformat()
    for d in data["dsos"]:
        d["id"] = f"{d['id']}-{suffix}"
    for b in data["bsps"]:
        b["id"] = f"{b['id']}-{suffix}"
        for a in b["assets"]:
            if a.get("dso_id"):
                a["dso_id"] = f"{a['dso_id']}-{suffix}"
    for e in data["tso"]["emergencies"]:
        if e.get("curtail_dso"):
            e["curtail_dso"] = f"{e['curtail_dso']}-{suffix}"
    scenario = Scenario.model_validate(data)
    path = tmp_path / f"scenario-{suffix}.yaml"
    dump_scenario(scenario, path)
    return scenario, path


def test_document_rules_checks_and_faults_agree():
    ids = [r.id for r in RULES]
    assert len(ids) == len(set(ids)), "a rule ID is used twice"
    assert set(CHECKS) == set(ids), (
        f"rules without a check: {set(ids) - set(CHECKS)}; checks without a rule: {set(CHECKS) - set(ids)}"
    )
    doc = (ROOT / "docs" / "conformance.md").read_text()
    assert doc == markdown(), "docs/conformance.md is stale: tsodso conformance --doc > docs/conformance.md"
    for role, faults in FAULTS.items():
        for name, (_, breaks) in faults.items():
            assert breaks and all(b in ids and b.startswith(role.upper()) for b in breaks), (role, name)


def _not_passed(report) -> dict[str, str]:
    return {
        r.id: f"{r.status}: {r.evidence}"
        for r in report.results
        if r.status != "pass" and r.id.split("-", 1)[1] not in ALWAYS_SKIPPED
    }


@pytest.mark.parametrize("role", ["bsp", "dso", "tso", "mo"])
async def test_reference_emulator_passes_its_suite(broker, role, uid, tmp_path):
    device_id = f"{role}-{uid}"
    scenario, path = own_peers(tmp_path, uid)
    speed = TSO_SPEED if role == "tso" else SPEED
    keys = tmp_path / "device-key.json"
    with emulator(role, device_id, broker.url, speed=speed, scenario=path, public_key_out=keys) as proc:
        await on_the_bus(proc)
        # after the script the process is killed: the broker publishes its will (PR-020 is judged);
        # every message the device sent is signed, and the signature verifies with its key (EN-060)
        report = await run_suite(
            role,
            device_id,
            broker.url,
            scenario,
            speed=speed,
            timeout_s=60,
            report_dir=tmp_path,
            leave=(10.0, proc.kill),
            device_key=device_key(keys, f"{role}/{device_id}"),
        )
    assert report.aborted is None
    assert {r.id: r.evidence for r in report.results if r.status != "pass"} == {}
    assert report.passed
    assert "signature verified" in next(r.evidence for r in report.results if r.id.endswith("-EN-060"))
    assert (tmp_path / "conformance.json").exists() and "PASSED" in (tmp_path / "conformance.html").read_text()
    assert len(report.results) == len([r for r in RULES if r.role == role])


@pytest.mark.xdist_group("cpu-heavy")  # never beside the hostile flood: both load every core
async def test_each_fault_mode_fails_exactly_its_rules(own_mosquitto, uid, tmp_path):
    """All fault emulators at once, one session each, side by side (BSP, DSO and market-operator sessions
    at half speed: eighteen devices at once on two cores; each TSO with its own DSO and BSP)."""
    url = own_mosquitto.url
    cases = []  # (role, fault, device id, speed, scenario, scenario file)
    for role, faults in FAULTS.items():
        for n, fault in enumerate(faults):
            scenario, path = own_peers(tmp_path, f"{uid}-{role}{n}")
            cases.append(
                (role, fault, f"{role}-{fault}-{uid}", TSO_SPEED if role == "tso" else SPEED / 2, scenario, path)
            )
    with _all(emulator(role, dev, url, fault, speed, path) for role, fault, dev, speed, _, path in cases) as procs:
        await on_the_bus(*procs)  # the sessions start once all eighteen devices have started
        reports = await asyncio.gather(
            *(
                run_suite(role, dev, url, scenario, speed=speed, timeout_s=90, leave=(10.0, proc.kill))
                for (role, _, dev, speed, scenario, _), proc in zip(cases, procs)
            )
        )
        printed = [output(proc) for proc in procs]
    for (role, fault, *_), report, said in zip(cases, reports, printed):
        expected = FAULTS[role][fault][1]
        got = report.failed_ids()
        assert got == expected, (
            f"{role} --fault {fault}: failed {sorted(got)}, expected {sorted(expected)}: "
            f"{[(r.id, r.evidence) for r in report.results if r.status == 'fail']}; the device printed:\n{said}"
        )
        skipped = {r.id.split("-", 1)[1] for r in report.results if r.status == "skip"}
        assert skipped <= {"SP-020"}, (fault, skipped)  # stale telemetry may leave no sample there


@contextmanager
def _all(managers):
    from contextlib import ExitStack

    with ExitStack() as stack:
        yield [stack.enter_context(m) for m in managers]


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_plain_paho_device_passes_the_bsp_suite(broker, uid, protocol):
    """The contract without the project's code: a paho-mqtt script built from the JSON Schemas."""
    if broker.kind == "embedded" and protocol == "5":
        pytest.skip("the embedded broker speaks MQTT 3.1.1 only")
    from tsodso.schemas import signing

    spec = BrokerSpec.parse(broker.url)
    device_id = f"acme-{uid}"
    key = signing.generate([f"bsp/{device_id}"])[f"bsp/{device_id}"]  # signed from docs/security.md alone
    with device(
        "tests/devices/paho_bsp.py",
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--device-id",
        device_id,
        "--protocol",
        protocol,
        f"--signing-key={signing.seed_text(key)}",  # one argument, even when the seed's text begins with '-'
    ) as proc:
        report = await run_suite(
            "bsp", device_id, broker.url, SCENARIO, speed=SPEED, timeout_s=90, device_key=key.verify_key
        )
        printed = output(proc)
    assert report.aborted is None, printed
    assert _not_passed(report) == {}
    assert "signature verified" in next(r.evidence for r in report.results if r.id == "BSP-EN-060")


def test_cli_says_why_when_no_device_answers(broker, uid, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "conformance",
            "--role",
            "bsp",
            "--device-id",
            f"nobody-{uid}",
            "--broker",
            broker.url,
            "--timeout",
            "1",
            "--report",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1
    assert f"no retained actor_state 'online' from bsp/nobody-{uid} within 1 s" in result.output
    assert f"conformance: playing the peers of bsp/nobody-{uid} on {broker.url} at 1x" in " ".join(
        result.output.split()
    )
    assert (tmp_path / "conformance.json").exists()


def test_cli_rules_pattern_selects_rules(broker, uid):
    result = CliRunner().invoke(
        app,
        [
            "conformance",
            "--role",
            "dso",
            "--device-id",
            f"nobody-{uid}",
            "--broker",
            broker.url,
            "--timeout",
            "1",
            "--rules",
            "DSO-MV-*",
        ],
    )
    lines = [line for line in result.output.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert [line.split()[1] for line in lines] == ["DSO-MV-010", "DSO-MV-020", "DSO-MV-030"]


@pytest.mark.mosquitto
async def test_suite_over_tls_with_credentials_and_access_lists(tmp_path, uid):
    """Mosquitto with TLS, passwords and the access list from the rights table: the emulator (MQTT 5) and
    the suite (MQTT 3.1.1, TSO account; recorder on an observer account) all log in over TLS."""
    import shutil

    from tests.conftest import mosquitto_or_skip
    from tsodso.broker import start_broker
    from tsodso.broker.acl import username, write_auth
    from tsodso.schemas.envelope import Party

    mosquitto_or_skip()
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for the TLS listener")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    device_id = f"tls-{uid}"
    actors = [Party(role="tso", id="tso"), Party(role="bsp", id=device_id)]
    auth = write_auth(
        tmp_path / "auth", actors, {username(a): "s3cret" for a in actors} | {"observer": "watch"}, observer="observer"
    )
    auth += f"\ncafile {cert}\ncertfile {cert}\nkeyfile {key}\n"
    with start_broker("mosquitto", data_dir=tmp_path / "mq", auth=auth) as running:
        spec = BrokerSpec.parse(running.url)
        url = f"mqtts://{{}}:s3cret@{spec.host}:{spec.port}?ca={cert}"
        with emulator("bsp", device_id, url.format(f"bsp-{device_id}")) as proc:
            report = await run_suite(
                "bsp",
                device_id,
                url.format("tso-tso") + "&protocol=3.1.1",
                SCENARIO,
                speed=SPEED,
                timeout_s=60,
                leave=(10.0, proc.kill),
                observer=f"mqtts://observer:watch@{spec.host}:{spec.port}?ca={cert}",
            )
    assert report.aborted is None
    # the access list lets the suite's TSO account speak only as the TSO: no block activation as a market
    # operator, and the suite says so instead of judging a block that never reached the device
    not_passed = {r.id: r.evidence for r in report.results if r.status != "pass"}
    assert not_passed == {
        "BSP-FX-010": f"the broker did not pass the suite's block activation as mo/conformance on "
        f"tsodso/v1/mo/conformance/flex_activation/bsp/{device_id}"
    }


def test_emulate_lists_every_fault_with_the_rules_it_breaks():
    result = CliRunner().invoke(app, ["emulate", "--list-faults"])
    assert result.exit_code == 0, result.output
    for role, faults in FAULTS.items():
        for name, (_, breaks) in faults.items():
            assert f"{role} --fault {name}:" in result.output and f"fails {', '.join(sorted(breaks))})" in result.output
