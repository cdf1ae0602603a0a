"""Link conditions between two actors, applied by the sending gateway on the real broker path.

One :class:`LinkImpairment` per sender→receiver pair (``"tso/tso->dso/dso1"``; ``*`` matches any
role or id, e.g. ``"tso/*->dso/*"``): a fixed delay, a random extra delay drawn from a
distribution, a drop probability and outage windows (wall clock, epoch seconds) during which the
link is down. A delayed message is sent later by its own task, so the sender goes on with its other
links. Delays and drops are logged in the exchange log like everything else: a dropped message has
an ``out`` row with outcome ``dropped`` and the reason.
"""

import fnmatch
import random
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LinkImpairment:
    delay_s: float = 0.0
    jitter: Literal["none", "normal", "lognormal", "uniform"] = "none"
    jitter_s: float = 0.0  # normal: standard deviation; lognormal: sigma of log(s); uniform: width
    drop_probability: float = 0.0
    outages: tuple[tuple[float, float], ...] = ()  # (start, end) wall-clock epoch seconds

    def delay(self, rng: random.Random) -> float:
        """Seconds to hold one message (never negative)."""
        extra = 0.0
        if self.jitter == "normal":
            extra = rng.gauss(0.0, self.jitter_s)
        elif self.jitter == "lognormal":
            extra = rng.lognormvariate(0.0, self.jitter_s) * self.delay_s - self.delay_s if self.delay_s else 0.0
        elif self.jitter == "uniform":
            extra = rng.uniform(0.0, self.jitter_s)
        return max(0.0, self.delay_s + extra)

    def down(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.outages)


@dataclass
class LinkConditions:
    """Impairments keyed by ``"sender->receiver"`` patterns; the first pattern that matches wins."""

    links: dict[str, LinkImpairment] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._cache: dict[str, LinkImpairment | None] = {}

    def __bool__(self) -> bool:
        return bool(self.links)

    def for_link(self, sender: str, receiver: str) -> LinkImpairment | None:
        key = f"{sender}->{receiver}"
        if key not in self._cache:
            self._cache[key] = next(
                (imp for pattern, imp in self.links.items() if fnmatch.fnmatchcase(key, pattern)), None
            )
        return self._cache[key]

    def decide(self, sender: str, receiver: str, now: float) -> tuple[str | None, float]:
        """(why the message is dropped, or None; seconds to delay it)."""
        imp = self.for_link(sender, receiver)
        if imp is None:
            return None, 0.0
        if imp.down(now):
            return f"link {sender}->{receiver} down (outage)", 0.0
        if imp.drop_probability and self._rng.random() < imp.drop_probability:
            return f"link {sender}->{receiver} lost it (drop probability {imp.drop_probability})", 0.0
        return None, imp.delay(self._rng)
