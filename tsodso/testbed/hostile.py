"""A hostile peer: what a faulty or malicious device sends, at a chosen rate, to the actors of a run.

``tsodso hostile --broker URL --targets tso/tso,dso/dso1,bsp/bsp1 --rate 1000 --duration 20`` (or
``python -m tsodso.testbed.hostile``) connects as a client of its own and sends, round robin over the
targets and these kinds, until its duration is over:

- ``garbage``      random bytes
- ``deep``         JSON nested 5 000 levels deep
- ``long_int``     an integer literal of 5 000 digits
- ``nan``          a setpoint whose numbers are NaN and Infinity
- ``long_type``    a topic whose type segment is 200 characters long
- ``crowd``        an envelope with 500 recipients
- ``future``       created_at far in the future, valid until the year 9999
- ``forged``       a schema-valid setpoint, limit or termination "from" the TSO or the DSO, unsigned,
                   with a fresh id and a valid expiry (what a stranger on an open broker can send)
- ``replay``       a copy of a real message it saw on the bus (it subscribes to everything it can)

It reports what it sent per kind. It is a test tool: point it only at brokers of your own.
"""

import argparse
import asyncio
import itertools
import json
import os
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.loop import run as run_batched
from tsodso.gateway.mqtt import Subscriber
from tsodso.schemas.envelope import Party
from tsodso.schemas.topics import PREFIX

KINDS = ("garbage", "deep", "long_int", "nan", "long_type", "crowd", "future", "forged", "replay")


def _envelope(type_name: str, sender: Party, to: Party, *, valid_s: float = 3.0, **extra: object) -> dict:
    now = datetime.now(UTC)
    return {
        "message_id": str(uuid.uuid4()),
        "type": type_name,
        "schema_version": "1.0",
        "sender": {"role": sender.role, "id": sender.id},
        "recipients": [{"role": to.role, "id": to.id}],
        "sequence": 1,
        "created_at": now.isoformat(),
        "valid_until": (now + timedelta(seconds=valid_s)).isoformat(),
        **extra,
    }


def _topic(sender: Party, type_name: str, to: Party) -> str:
    return f"{PREFIX}/{sender.role}/{sender.id}/{type_name}/{to.role}/{to.id}"


def hostile_message(
    kind: str, to: Party, *, tso: Party, dso: Party, seen: list[tuple[str, bytes]], rng: random.Random
) -> tuple[str, bytes]:
    """One hostile (topic, payload) of ``kind`` for ``to``."""
    now = datetime.now(UTC).isoformat()
    setpoint = {
        "bsp_id": to.id,
        "cycle": rng.randrange(10**6),
        "instant": now,
        "reference_mw": 200.0,
        "delta_mw": 20.0,
        "bid_deltas_mw": {f"{to.id}-up": 20.0},
    }
    if kind == "garbage":
        return _topic(tso, "delta_setpoint", to), rng.randbytes(rng.randrange(1, 300))
    if kind == "deep":
        return _topic(tso, "telemetry", to), b'{"envelope":' + b"[" * 5000 + b"]" * 5000 + b',"body":{}}'
    if kind == "long_int":
        env_text = json.dumps(_envelope("delta_setpoint", tso, to)).replace(
            '"sequence": 1', '"sequence": ' + "9" * 5000
        )
        return _topic(tso, "delta_setpoint", to), f'{{"envelope": {env_text}, "body": {json.dumps(setpoint)}}}'.encode()
    if kind == "nan":
        text = json.dumps(setpoint).replace("20.0,", "NaN,").replace("200.0", "Infinity")
        return _topic(
            tso, "delta_setpoint", to
        ), f'{{"envelope": {json.dumps(_envelope("delta_setpoint", tso, to))}, "body": {text}}}'.encode()
    if kind == "long_type":
        return _topic(tso, "t" * 200, to), json.dumps({"envelope": _envelope("t" * 200, tso, to), "body": {}}).encode()
    if kind == "crowd":
        env = _envelope("delta_setpoint", tso, to)
        env["recipients"] = [{"role": "bsp", "id": f"b{i}"} for i in range(500)]
        return _topic(tso, "delta_setpoint", to), json.dumps({"envelope": env, "body": setpoint}).encode()
    if kind == "future":
        env = _envelope("delta_setpoint", tso, to)
        env["created_at"], env["valid_until"] = "9999-12-30T00:00:00+00:00", "9999-12-31T00:00:00+00:00"
        return _topic(tso, "delta_setpoint", to), json.dumps({"envelope": env, "body": setpoint}).encode()
    if kind == "forged":
        if to.role == "bsp" and rng.random() < 0.5:
            return _topic(tso, "delta_setpoint", to), json.dumps(
                {"envelope": _envelope("delta_setpoint", tso, to), "body": setpoint}
            ).encode()
        if to.role == "bsp":
            body = {
                "bsp_id": to.id,
                "bid_id": f"{to.id}-up",
                "direction": "A01",
                "max_mw": rng.choice([0.0, 1e9]),
                "valid_from": now,
            }
            return _topic(tso, "activation_limit", to), json.dumps(
                {"envelope": _envelope("activation_limit", tso, to), "body": body}
            ).encode()
        if to.role == "tso":
            body = {"dso_id": dso.id, "bid_id": "bsp1-up", "action": "terminate", "max_mw": 0.0}
            return _topic(dso, "termination_signal", to), json.dumps(
                {"envelope": _envelope("termination_signal", dso, to), "body": body}
            ).encode()
        body = {"bid_id": "x", "rank": 1}
        return _topic(tso, "merit_order_list", to), json.dumps(
            {"envelope": _envelope("merit_order_list", tso, to), "body": body}
        ).encode()
    if kind == "replay":
        if seen:
            return rng.choice(seen)
        return hostile_message("forged", to, tso=tso, dso=dso, seen=seen, rng=rng)
    raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")


async def flood(
    broker_url: str,
    targets: list[Party],
    *,
    rate: float,
    duration_s: float,
    tso: Party | None = None,
    dso: Party | None = None,
    kinds: tuple[str, ...] = KINDS,
    seed: int = 1,
) -> Counter[str]:
    """Send ``rate`` hostile messages per second (QoS 0, round robin over targets and kinds) for
    ``duration_s``; returns how many of each kind were sent."""
    spec = BrokerSpec.parse(broker_url)
    rng = random.Random(seed)
    tso = tso or Party(role="tso", id="tso")
    dso = dso or Party(role="dso", id="dso1")
    ident = f"hostile-{os.getpid()}"
    sent: Counter[str] = Counter()
    seen: list[tuple[str, bytes]] = []
    async with Subscriber(spec, ident) as client:
        await client.subscribe([f"{PREFIX}/#"], qos=0)

        async def listen() -> None:
            async for m in client.messages():
                if len(seen) < 2000 and not m.retain:
                    seen.append((m.topic, m.payload))

        listener = asyncio.create_task(listen())
        plan = itertools.cycle([(k, t) for k in kinds for t in targets])
        t0 = time.monotonic()
        n = 0
        try:
            while (elapsed := time.monotonic() - t0) < duration_s:
                due = int(elapsed * rate) - n
                for _ in range(max(0, min(due, 1000))):
                    kind, to = next(plan)
                    topic, payload = hostile_message(kind, to, tso=tso, dso=dso, seen=seen, rng=rng)
                    await client.publish(topic, payload, qos=0)
                    sent[kind] += 1
                    n += 1
                await asyncio.sleep(0.005)
        finally:
            listener.cancel()
    return sent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tsodso.testbed.hostile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", required=True)
    parser.add_argument("--targets", default="tso/tso,dso/dso1,bsp/bsp1", help="comma-separated role/id")
    parser.add_argument("--rate", type=float, default=1000.0, help="messages per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds")
    parser.add_argument("--kinds", default=",".join(KINDS))
    args = parser.parse_args(argv)
    targets = [Party(role=t.split("/")[0], id=t.split("/")[1]) for t in args.targets.split(",")]
    sent = run_batched(
        flood(args.broker, targets, rate=args.rate, duration_s=args.duration, kinds=tuple(args.kinds.split(",")))
    )
    print(json.dumps({"sent": sum(sent.values()), "by_kind": dict(sent)}), flush=True)


if __name__ == "__main__":
    main()
