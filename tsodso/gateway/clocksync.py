"""Clock offset between two actors, measured over the broker (NTP-style, min-RTT filter).

Actors on different hosts stamp messages with different clocks, so a one-way latency computed as
``received_us - created_us`` carries the offset between the two clocks. A probe is a ``heartbeat``
request: the prober notes t1 (its clock) when sending, the peer's gateway answers at once with its
own time t2, the prober notes t3 on arrival. Assuming symmetric paths,
``offset = t2 - (t1 + t3) / 2`` (peer clock minus prober clock), wrong by at most half the round
trip. Of N probes, the one with the smallest round trip gives the estimate; half its round trip is
the stated uncertainty.
"""

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from tsodso.gateway.client import Gateway, RequestTimeout
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import Heartbeat


@dataclass(frozen=True)
class ClockOffset:
    peer: str
    offset_ms: float  # peer clock - my clock
    uncertainty_ms: float  # half the smallest round trip
    rtt_min_ms: float
    probes: int

    def correct(self, one_way_ms: float, *, peer_sent: bool) -> float:
        """A one-way latency measured between me and the peer, with the offset taken out."""
        return one_way_ms + self.offset_ms if peer_sent else one_way_ms - self.offset_ms


async def measure_offset(gw: Gateway, peer: Party, *, probes: int = 20, timeout_s: float = 2.0) -> ClockOffset:
    """Up to ``probes`` probes, one after the other, within ``timeout_s`` in all: those answered in time
    count. Raises :class:`RequestTimeout` when none was answered (a busy or silent peer)."""
    best: tuple[float, float] | None = None  # (rtt_us, offset_us)
    answered = 0
    deadline = time.monotonic() + timeout_s
    for _ in range(probes):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        t1 = gw.now_us()
        try:
            answer = await gw.request(
                Heartbeat(sent_at=datetime.fromtimestamp(t1 / 1e6, UTC), interval_s=1.0), peer, timeout=left
            )
        except RequestTimeout:
            break
        answered += 1
        t3 = answer.received_us
        t2 = answer.body.sent_at.timestamp() * 1e6
        rtt = t3 - t1
        if best is None or rtt < best[0]:
            best = (rtt, t2 - (t1 + t3) / 2)
    if best is None:
        raise RequestTimeout(f"no answer from {peer} to a clock probe within {timeout_s:g} s")
    return ClockOffset(str(peer), best[1] / 1000, best[0] / 2000, best[0] / 1000, answered)
