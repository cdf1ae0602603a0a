"""Where a gateway round trip's time goes: ``tsodso bench rtt``'s gateway path (TSO -> DSO
``merit_order_list`` answered by ``mol_validation``, QoS 1, both ends in this process), with a
timestamp at each stage, beside the raw client's round trip in the same run.

    .venv/bin/python benchmarks/rtt_breakdown.py [--n 2000]

On a Mosquitto of its own (the project's configuration: TCP_NODELAY). The stages, in order:

  request -> TSO write      the TSO's request(): envelope, serialisation, log row, MQTT PUBLISH handed over
  TSO write -> DSO arrival  broker hop (write, Mosquitto, read, MQTT parsing in the client, PUBACK)
  DSO checks                every check on arrival (``ArrivalCheck.check``: parse, validate, rights, time, replay)
  DSO checks -> handler     log row, dispatch, the handler called
  handler -> DSO write      the handler's reply_now(): envelope, serialisation, log row, PUBLISH handed over
  DSO write -> TSO arrival  broker hop back
  TSO checks                every check on arrival of the answer
  TSO checks -> returns     log row, the waiting request woken by the loop, request() returns

The stamps are taken by wrapping the gateway's own objects (its connection's publish, its
ArrivalCheck); the wrappers add ~1 µs a stage, so the total is a little above ``bench rtt``'s.
Prints the median of each stage (µs) and the raw client's median round trip, as one JSON object.
"""

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tsodso.broker import start_broker
from tsodso.gateway import ExchangeLog, Gateway
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.loop import run
from tsodso.schemas.messages import MeritOrderList
from tsodso.testbed.bench.rtt import DSO, TSO, rtt_policy, run_rtt, sample_mol, sample_validation

STAGES = (
    "request -> TSO write",
    "TSO write -> DSO arrival",
    "DSO checks",
    "DSO checks -> handler",
    "handler -> DSO write",
    "DSO write -> TSO arrival",
    "TSO checks",
    "TSO checks -> returns",
)


def _stamped(fn: Callable[..., Any], marks: list[int]) -> Callable[..., Any]:
    """``fn``, noting when it is called."""

    def stamped(*args: Any, **kwargs: Any) -> Any:
        marks.append(time.perf_counter_ns())
        return fn(*args, **kwargs)

    return stamped


def _checked(fn: Callable[..., Any], marks: list[int]) -> Callable[..., Any]:
    """``fn``, noting when it is called and when it returns."""

    def checked(*args: Any, **kwargs: Any) -> Any:
        marks.append(time.perf_counter_ns())
        try:
            return fn(*args, **kwargs)
        finally:
            marks.append(time.perf_counter_ns())

    return checked


async def breakdown(url: str, n: int, warmup: int = 200) -> dict[str, float]:
    spec = BrokerSpec.parse(url)
    policy = rtt_policy()
    mol = sample_mol()
    answer = sample_validation(mol)
    marks: list[int] = []
    rows: list[list[float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        log = ExchangeLog(Path(tmp) / "exchange.sqlite", run_id="rtt-breakdown")
        async with (
            Gateway(TSO, spec, log=log, policy=policy) as tso,
            Gateway(DSO, spec, log=log, policy=policy) as dso,
        ):

            @dso.on(MeritOrderList)
            def validate(msg: Any) -> None:  # as bench rtt's DSO: a plain call, no task per request
                marks.append(time.perf_counter_ns())
                dso.reply_now(msg, answer)

            for gw in (tso, dso):
                client = gw._client
                assert client is not None
                client.publish = _stamped(client.publish, marks)  # type: ignore[method-assign]
                gw.check.check = _checked(gw.check.check, marks)  # type: ignore[method-assign]
            for i in range(warmup + n):
                marks.clear()
                t0 = time.perf_counter_ns()
                await tso.request(mol, DSO, timeout=10)
                t_end = time.perf_counter_ns()
                # TSO write, DSO checks in and out, handler, DSO write, TSO checks in and out
                if i >= warmup and len(marks) == 7:
                    points = [t0, *marks, t_end]
                    rows.append([(b - a) / 1000 for a, b in zip(points, points[1:], strict=False)])
        log.close()
    return {stage: round(statistics.median(r[k] for r in rows), 1) for k, stage in enumerate(STAGES)} | {
        "total": round(statistics.median(sum(r) for r in rows), 1),
        "round_trips": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker("mosquitto", data_dir=Path(tmp) / "mosquitto")
        try:
            stages = run(breakdown(broker.url, args.n))
            plain = run(run_rtt(broker.url, n=args.n, qos=1))
        finally:
            broker.stop()
    print(
        json.dumps(
            {
                "stages_us": stages,
                "bench_rtt_gateway_p50_us": round(plain["gateway_p50_ms"] * 1000, 1),
                "bench_rtt_raw_p50_us": round(plain["raw_p50_ms"] * 1000, 1),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
