"""What each protection costs per message, on this machine, without a broker: the arrival checks of
one ~600-byte delta setpoint, unsigned and signed, and the signature a sender adds.

    .venv/bin/python benchmarks/security_cost.py [--n 20000]

Prints µs per message (median of 5 runs of n): signing (sender), the whole arrival check without
keys, and with keys (signature verified, then the same checks); and, for the flood a hostile peer
sends, the cost of refusing an unsigned forgery, a message with a 5 000-digit number and one nested
5 000 deep.
"""

import argparse
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from tsodso.gateway.arrival import ArrivalCheck, Rejected, Trust, encode
from tsodso.schemas import signing
from tsodso.schemas.envelope import Envelope, Party
from tsodso.schemas.messages import DeltaSetpoint
from tsodso.schemas.rights import default_rights
from tsodso.schemas.topics import topic_for

TSO, BSP = Party(role="tso", id="tso"), Party(role="bsp", id="bsp1")


def message() -> bytes:
    now = datetime.now(UTC)
    env = Envelope(
        message_id=uuid.uuid4(),
        type="delta_setpoint",
        schema_version="1.0",
        sender=TSO,
        recipients=[BSP],
        sequence=7,
        created_at=now,
        valid_until=now + timedelta(seconds=4),
        correlation_id=uuid.uuid4(),
    )
    body = DeltaSetpoint(
        bsp_id="bsp1", cycle=42, instant=now, reference_mw=200.0, delta_mw=7.5, bid_deltas_mw={"bsp1-up": 7.5}
    )
    return encode(env, body)


def per_message_us(make, n: int) -> float:
    """``make()`` gives the function to time, afresh for each of the 5 runs."""
    runs = []
    for _ in range(5):
        fn = make()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    key = signing.generate(["tso/tso"])["tso/tso"]
    trust = Trust({"tso/tso": key.verify_key})
    topic = topic_for(TSO, "delta_setpoint", BSP)
    plain = [message() for _ in range(n)]
    signed = [signing.sign(m, key) for m in plain]
    now_us = time.time_ns() // 1000

    def checks(payloads, trust):
        def make():
            it = iter(payloads)
            check = ArrivalCheck(BSP, default_rights(), trust=trust, dedup_window=10 * n)
            return lambda: check.check(topic, next(it), now_us)

        return make

    def refusing(payload, trust):
        def make():
            check = ArrivalCheck(BSP, default_rights(), trust=trust)

            def run() -> None:
                try:
                    check.check(topic, payload, now_us)
                except Rejected:
                    pass

            return run

        return make

    def signs():
        it = iter(plain)
        return lambda: signing.sign(next(it), key)

    rows = [
        ("sign one message (sender)", per_message_us(signs, n)),
        ("arrival checks, receiver without keys", per_message_us(checks(plain, None), n)),
        ("arrival checks, signature verified", per_message_us(checks(signed, trust), n)),
        ("refuse an unsigned forgery (receiver with keys)", per_message_us(refusing(plain[0], trust), n)),
        (
            "refuse a 5 000-digit number (no keys)",
            per_message_us(refusing(plain[0].replace(b'"cycle":42', b'"cycle":' + b"9" * 5000), None), n // 10),
        ),
        (
            "refuse JSON nested 5 000 deep (no keys)",
            per_message_us(refusing(b'{"envelope":' + b"[" * 5000 + b"]" * 5000 + b"}", None), n // 10),
        ),
    ]
    print(f"delta_setpoint of {len(plain[0])} bytes ({len(signed[0])} signed), median of 5 x {n}")
    for name, us in rows:
        print(f"{name:50s} {us:8.1f} µs")


if __name__ == "__main__":
    main()
