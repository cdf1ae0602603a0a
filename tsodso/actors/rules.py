"""The papers' rules and numbers, each in one place with its source.

Sources are cited by the keys of ``docs/references.md``. Where the papers give no number and the
project had to choose one, the entry says "project's choice" and why. Every user imports from here:
the actors' decisions (``actors.tso``, ``actors.dso``, ``actors.bsp``, ``actors.mo``), the conformance
checks (``testbed.conformance``) and the report (``testbed.report``). ``docs/domain.md`` lists them
with their users.
"""

from datetime import datetime, timedelta

# --- time ----------------------------------------------------------------------------------------

ISP = timedelta(minutes=15)
"""Imbalance settlement period: bids, merit order lists and settlement are per ISP (CS review §IV.A)."""

SETPOINT_PERIOD_S = 4.0
"""[s] The aFRR delta setpoint's minimum time resolution (CS review §IV.A-B). A scenario may choose a
longer period (``setpoint_period_s``), never a shorter one."""

RAMP_STEP_S = 30.0
"""[s] The worked example raises the delta setpoint 1 MW every 30 s at the bid's 2 MW/min: the
setpoint changes in steps of (ramp rate x this), no faster than the bid's ramp (CS review §IV.B).
The scenario's ``tso.setpoint_step_s`` defaults to it."""

MONITORING_PERIOD_S = 300.0
"""[s] The TSO compares requested and delivered volume every 5 minutes (CS review §IV.A)."""


def isp_of(t: datetime) -> datetime:
    """Start of the ISP that contains ``t``."""
    return t.replace(minute=t.minute - t.minute % 15, second=0, microsecond=0)


# --- gates: until when a bid counts --------------------------------------------------------------

GATE_CLOSURE = timedelta(0)
"""How long before an ISP starts the TSO stops taking aFRR bids for it: at the start of each ISP the
TSO aggregates the bids into the merit order list (CS review Fig. 4), so a bid that arrives once the
ISP has begun comes too late and is refused. Project's choice: the Dutch market closes earlier (bids
are submitted the day before in the worked example, CS review §IV.B); zero lead keeps the short
scenarios short."""

LOCAL_GATE = timedelta(seconds=60)
"""DSO local markets (DSO-managed and fragmented schemes) clear this long before the ISP, so the DSO
buys for its congestion first and forwards the rest in time for the TSO's list (CS review Table I:
"priority user"). Project's choice of the lead."""

MARKET_GATE = timedelta(seconds=30)
"""The independent market operator of the integrated market clears this long before the ISP
(CS review Table I, scheme 6). Project's choice of the lead."""


def gate_closure(isp_start: datetime, lead: timedelta = GATE_CLOSURE) -> datetime:
    """The instant bids for ``isp_start`` close: the TSO's (``GATE_CLOSURE``), or a market's that
    clears ``lead`` ahead (``LOCAL_GATE``, ``MARKET_GATE``)."""
    return isp_start - lead


def bid_in_time(isp_start: datetime, now: datetime, lead: timedelta = GATE_CLOSURE) -> bool:
    """Whether a bid for the ISP beginning at ``isp_start`` may still be taken at ``now``."""
    return now < gate_closure(isp_start, lead)


def late_bid_reason(isp_start: datetime, now: datetime, lead: timedelta = GATE_CLOSURE) -> str:
    """What a refusal of a late bid says."""
    return (
        f"late: bid for the ISP of {isp_start:%Y-%m-%d %H:%M}Z arrived at {now:%H:%M:%S}Z, after its gate "
        f"closure at {gate_closure(isp_start, lead):%H:%M:%S}Z"
    )


# --- the merit order list ------------------------------------------------------------------------

MOL_ITERATIONS = 3
"""The TSO re-sends the merit order list to a DSO until the DSO changes no bid (CS review Fig. 4:
"repeat until the MOL is accepted"). Project's choice: at most this many rounds; a DSO that still
changes bounds in the last round has its last answer applied."""


# --- delivery ------------------------------------------------------------------------------------

DELIVERY_BAND = (-0.10, 0.20)
"""A BSP may deliver within [-10 %, +20 %] of its delta setpoint (CS review §IV.A-B)."""

STEADY_MIN_MW = 0.5
"""[MW] A cycle is judged against the band only when the setpoint it answers is at least this large
(relative tolerance of a near-zero setpoint is noise). Project's choice."""

COMPLIANT_SHARE = 0.9
"""A 5-minute monitoring period is compliant when the delivered energy is within the band of the
requested energy and at least this share of its steady cycles were within the band. Project's choice:
the papers say the TSO compares requested and delivered volume (CS review §IV.A), not how strictly."""


def band_mw(setpoint_mw: float) -> tuple[float, float]:
    """[MW] The delivery band of a delta setpoint, (low, high), for either sign."""
    a, b = setpoint_mw * (1 + DELIVERY_BAND[0]), setpoint_mw * (1 + DELIVERY_BAND[1])
    return (a, b) if setpoint_mw >= 0 else (b, a)


def within_band(setpoint_mw: float, delivered_mw: float, *, slack_mw: float = 0.0) -> bool:
    """Whether ``delivered_mw`` answers ``setpoint_mw`` within the band (widened by ``slack_mw``)."""
    lo, hi = band_mw(setpoint_mw)
    return lo - slack_mw <= delivered_mw <= hi + slack_mw


def is_steady(setpoint_mw: float | None, previous_mw: float | None) -> bool:
    """Whether a cycle is judged: its setpoint is at least ``STEADY_MIN_MW`` and had not changed in the
    cycle before (a step is given one setpoint period to be followed)."""
    return setpoint_mw is not None and abs(setpoint_mw) >= STEADY_MIN_MW and previous_mw == setpoint_mw


def energy_within_band(requested_mwh: float, delivered_mwh: float) -> bool:
    """Whether the delivered energy of a period is within the band of the requested (absolute values)."""
    return requested_mwh < 1e-6 or within_band(requested_mwh, delivered_mwh)


def compliant(requested_mwh: float, delivered_mwh: float, steady_share: float) -> bool:
    """A monitoring period's verdict (see ``COMPLIANT_SHARE``)."""
    return energy_within_band(requested_mwh, delivered_mwh) and steady_share >= COMPLIANT_SHARE


def ramp_step_mw(ramp_rate_mw_per_min: float, step_s: float = RAMP_STEP_S) -> float:
    """[MW] How far a bid's setpoint may move at one step instant."""
    return ramp_rate_mw_per_min * step_s / 60
