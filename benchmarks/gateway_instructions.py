"""What each gateway step costs in CPU instructions, counted by valgrind (callgrind), not timed.

    .venv/bin/python benchmarks/gateway_instructions.py [--n 300] [--steps-only]

Timings on these shared two-core hosts move by 2x from one session to the next (BENCHMARKS.md); an
instruction count does not: callgrind counts the instructions a thread executes, whatever else the
machine is doing, and gives the same number for the same code and input (to ~0.5 % here). Each case
runs twice under callgrind, with 0 and with ``n`` repetitions after the same set-up, and the
difference over ``n`` is its cost per repetition, in the main thread only (the exchange log's writer
thread is reported apart: it runs beside the message path, not on it).

Steps (no broker, one MOL request of ``bench rtt``, as ``publish`` and the receiving path do them):
  build      envelope, serialisation and topic of one message (``Gateway._make``)
  check      every check on arrival (``ArrivalCheck.check``: parse, validate, rights, time, replay)
  log_out    the exchange-log row of a sent message
  dispatch   the log row of an accepted message and its handler called (``Gateway._deliver``)
Round trips (a Mosquitto of its own, the project's configuration; both ends in this process):
  rtt_gateway  TSO ``request`` -> DSO plain handler ``reply_now`` -> TSO, QoS 1, exchange log on
  rtt_raw      the same sizes and MQTT 5 properties between two plain connections (``bench rtt``'s raw path)

Needs valgrind. Prints one JSON object.
"""

import argparse
import asyncio
import gc
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

STEPS = ("build", "check", "log_out", "dispatch")
ROUND_TRIPS = ("rtt_gateway", "rtt_raw")
SET_UP = 1000  # messages made in every step case's set-up, whatever n (so that only the loop differs)


def _steps(case: str, n: int) -> None:
    from tsodso.gateway import ExchangeLog, Gateway
    from tsodso.gateway.arrival import ArrivalCheck
    from tsodso.schemas.messages import MeritOrderList
    from tsodso.schemas.rights import default_rights
    from tsodso.testbed.bench.rtt import DSO, TSO, rtt_policy, sample_mol

    policy = rtt_policy()
    log = ExchangeLog(Path(tempfile.mkdtemp()) / "steps.sqlite", run_id="steps", flush_interval_s=3600)
    tso = Gateway(TSO, "memory://steps", log=log, policy=policy)
    dso = Gateway(DSO, "memory://steps", log=log, policy=policy)
    dso.on(MeritOrderList, lambda msg: None)
    check = ArrivalCheck(DSO, default_rights(), policy=policy)
    mol = sample_mol()
    reply_to = "tsodso/v1/dso/bench-dso/mol_validation/tso/bench-tso"
    made = [tso._make(mol, DSO, reply_to=reply_to) for _ in range(max(SET_UP, n))]
    now = made[-1].created_us + 100
    received = check.check(made[0].topic, made[0].payload, now)
    gc.disable()  # as a run keeps the collector off the hot path
    if case == "build":
        for _ in range(n):
            tso._make(mol, DSO, reply_to=reply_to)
    elif case == "check":
        for m in made[1 : n + 1]:
            check.check(m.topic, m.payload, now)
    elif case == "log_out":
        for m in made[:n]:
            tso._record_out(m, 1, now, None)
    elif case == "dispatch":
        for _ in range(n):
            dso._deliver(received, 1)
    os._exit(0)  # the rows stay unwritten: the writer's work is not the step's


async def _round_trips(case: str, n: int, url: str) -> None:
    from tsodso.gateway import ExchangeLog, Gateway
    from tsodso.gateway.connection import BrokerSpec
    from tsodso.gateway.mqtt import Incoming, MqttConnection
    from tsodso.schemas.messages import MeritOrderList
    from tsodso.testbed.bench.rtt import DSO, TSO, rtt_policy, sample_mol, sample_validation

    spec = BrokerSpec.parse(url)
    policy = rtt_policy()
    mol = sample_mol()
    answer = sample_validation(mol)
    warmup = 20
    with tempfile.TemporaryDirectory() as tmp:
        log = ExchangeLog(Path(tmp) / "exchange.sqlite", run_id="instructions")
        async with Gateway(TSO, spec, log=log, policy=policy) as tso, Gateway(DSO, spec, log=log, policy=policy) as dso:

            @dso.on(MeritOrderList)
            def validate(msg: Any) -> None:  # as bench rtt's DSO: a plain call, no task per request
                dso.reply_now(msg, answer)

            request_bytes = len(tso.build(mol, DSO)[1])
            response_bytes = len(dso.build(answer, TSO)[1])
            if case == "rtt_gateway":
                for _ in range(warmup + n):
                    await tso.request(mol, DSO, timeout=60)
        log.close()
    if case == "rtt_raw":
        answers: asyncio.Queue[Incoming] = asyncio.Queue()
        request, response = b"x" * request_bytes, b"y" * response_bytes

        def echo(m: Incoming) -> None:
            rep.publish("bench/raw/rep", response, 1, expiry_s=900, correlation=m.property("correlation_data"))

        req = MqttConnection(spec, "instructions-req", on_message=answers.put_nowait)
        rep = MqttConnection(spec, "instructions-rep", on_message=echo)
        async with req, rep:
            await req.subscribe(["bench/raw/rep"], qos=1)
            await rep.subscribe(["bench/raw/req"], qos=1)
            for _ in range(warmup + n):
                correlation = uuid.uuid4().bytes
                req.publish(
                    "bench/raw/req", request, 1, expiry_s=900, response_topic="bench/raw/rep", correlation=correlation
                )
                await answers.get()


def _count(case: str, n: int, url: str | None, out: Path) -> tuple[int, int]:
    """(main thread, other threads) instructions of one run of ``case`` under callgrind."""
    prefix = out / f"{case}.{n}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        f"--callgrind-out-file={prefix}",
        sys.executable,
        __file__,
        "--case",
        case,
        "--n",
        str(n),
    ]
    if url:
        cmd += ["--url", url]
    ran = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    if ran.returncode != 0:
        raise SystemExit(f"{case} failed under valgrind: {ran.stderr.strip().splitlines()[-1:]}")
    totals = []
    for f in sorted(glob.glob(f"{prefix}-*"), key=lambda p: int(p.rsplit("-", 1)[1])):
        for line in Path(f).read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                totals.append(int(line.split()[1]))
                break
    return totals[0], sum(totals[1:])


def _per_repetition(case: str, n: int, url: str | None, out: Path) -> tuple[int, int]:
    main0, other0 = _count(case, 0, url, out)
    main1, other1 = _count(case, n, url, out)
    return round((main1 - main0) / n), round((other1 - other0) / n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=300, help="repetitions per case (default 300)")
    parser.add_argument("--steps-only", action="store_true", help="only the steps, no broker")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, run under callgrind by the parent
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case in STEPS:
        _steps(args.case, args.n)
        return
    if args.case in ROUND_TRIPS:
        asyncio.run(_round_trips(args.case, args.n, args.url))
        return
    if args.n < 1:
        parser.error(f"--n must be at least 1, not {args.n}")
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    from tsodso.broker import start_broker

    result: dict[str, Any] = {"benchmark": "gateway_instructions", "unit": "instructions (main thread)", "n": args.n}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        result["steps"] = {case: _per_repetition(case, args.n, None, out)[0] for case in STEPS}
        if not args.steps_only:
            broker = start_broker("mosquitto", data_dir=out / "mosquitto")
            try:
                gw, writer = _per_repetition("rtt_gateway", args.n, broker.url, out)
                raw, _ = _per_repetition("rtt_raw", args.n, broker.url, out)
            finally:
                broker.stop()
            result["round_trip"] = {
                "gateway": gw,
                "raw": raw,
                "ratio": round(gw / raw, 3),
                "exchange_log_writer_thread": writer,
            }
    result["machine"] = f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}"
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
