"""What batching each connection's writes per turn of the loop (``tsodso.gateway.loop``) changes: the
same measurements with this process on asyncio's plain loop and on the batching loop, interleaved.

    .venv/bin/python benchmarks/batched_writes.py [--rounds 3] [--n 20000]

On a Mosquitto of its own (the project's configuration: TCP_NODELAY), per round and loop:
- throughput (``tsodso bench throughput``'s two directions, gateway and raw client, QoS 0 and 1): this
  process sends, or receives, on the loop under test; the other process runs on the batching loop;
- round trip (``tsodso bench rtt``, 2 000 QoS 1 request/responses): both ends in this process.
Prints one JSON line per round and loop, then the medians.
"""

import argparse
import asyncio
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from tsodso.broker import start_broker
from tsodso.gateway.loop import run
from tsodso.testbed.bench.rtt import run_rtt
from tsodso.testbed.bench.throughput import _receive, _send

LOOPS = {"plain": asyncio.run, "batching": run}


def one_round(url: str, loop: str, n: int, tmp: Path) -> dict[str, Any]:
    runner = LOOPS[loop]
    out: dict[str, Any] = {"loop": loop}
    for qos in (0, 1):
        for direction, fn in (("send", _send), ("receive", _receive)):
            for path in ("raw", "gateway"):
                got, first, last = runner(fn(url, path, n, qos, tmp))
                out[f"{direction}_{path}_qos{qos}"] = round(got / ((last - first) / 1e9)) if last > first else 0
                if got != n:
                    out[f"{direction}_{path}_qos{qos}_lost"] = n - got
    rtt = runner(run_rtt(url, n=2000, qos=1))
    out.update(rtt_gateway_p50_ms=rtt["gateway_p50_ms"], rtt_raw_p50_ms=rtt["raw_p50_ms"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        broker = start_broker("mosquitto", data_dir=Path(tmp) / "mosquitto")
        rows: list[dict[str, Any]] = []
        try:
            for _ in range(args.rounds):
                for loop in LOOPS:
                    rows.append(one_round(broker.url, loop, args.n, Path(tmp)))
                    print(json.dumps(rows[-1]), flush=True)
        finally:
            broker.stop()
    for loop in LOOPS:
        mine = [r for r in rows if r["loop"] == loop]
        medians = {k: statistics.median(r[k] for r in mine) for k in mine[0] if k != "loop"}
        print(json.dumps({"loop": loop, "median_of": len(mine), **medians}))


if __name__ == "__main__":
    main()
