"""What a run leaves in ``summary.json``, as one typed model: the summary is built as this model
(``testbed.summary``), written from it, and read back through it by the terminal, the report and the
comparison, so that every view reads the same fields with the same units.

Wall-clock measurements (latencies, computation times, ``wall_clock_s``) are marked in their
descriptions; everything else is decided in scenario time and is the same in two virtual-time runs.
"""

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Percentiles(_Model):
    """A distribution of wall-clock durations [ms]; p50/p99 absent when nothing was measured."""

    count: int
    p50: float | None = None
    p99: float | None = None


class LinkPercentiles(Percentiles):
    p90: float | None = None
    max: float | None = None


class CorrectedLink(LinkPercentiles):
    uncertainty_ms: float = Field(description="[ms] summed uncertainty of the two clock offsets")


class SiteBridge(_Model):
    """A BSP behind a field-protocol bridge (``actors.bsp_iec104``): what the bridge adds to each setpoint
    [ms, wall], from its first command to the site until the site's last confirmation and last measured value."""

    protocol: Literal["iec104"] = "iec104"
    site: str = Field(description="the site's address and common address")
    setpoints: int = Field(description="setpoints commanded to the site")
    not_taken: int = Field(description="setpoints the site did not take (not connected, no confirmation in time)")
    stale: int = Field(description="setpoints answered without a measured value of their instant")
    confirmations_missed: int = Field(
        default=0,
        description="commands whose confirmation the IEC 104 library missed, taken on the confirmation read off "
        "the wire or on the site's measured value of their instant (docs/iec104.md)",
    )
    limits_sent: int = Field(default=0, description="activation limits the site confirmed on its assets' limit points")
    limits_not_taken: int = Field(default=0, description="activation limits the site did not confirm")
    site_losses: int = Field(
        default=0, description="times the site's connection went (the BSP said 'offline' meanwhile)"
    )
    confirmed: LinkPercentiles
    measured: LinkPercentiles


class ClockOffset(_Model):
    """An actor's host clock against the TSO's, measured over the broker (``gateway.clocksync``)."""

    actor: str | None = None
    offset_ms: float = Field(description="[ms] the actor's clock minus the TSO's")
    uncertainty_ms: float = Field(description="[ms] half the best round trip")
    rtt_min_ms: float | None = None


class CongestionOfDso(_Model):
    seconds_above_100: float = Field(description="[s, scenario] the grid's most loaded element above 100 %")
    peak_loading_percent: float = Field(description="[%] highest loading of a line or transformer")
    needs: list[dict[str, Any]] = Field(description="congestion needs found (element, loading, relief)")


class Traffic(_Model):
    messages: int
    bytes: int = Field(description="[B] payload bytes (wall-clock fields inside make them vary slightly)")


class SchemeMetrics(_Model):
    """The coordination scheme's outcome (``testbed.compare`` puts one per scheme side by side)."""

    scheme: str
    total_cost_eur: float = Field(description="[EUR] aFRR energy plus block activations")
    afrr_cost_eur: float
    flex_cost_eur: float
    balancing_need_mwh: float = Field(description="[MWh] the system imbalance over the run")
    balancing_covered_mwh: float
    balancing_covered_percent: float
    congestion: dict[str, CongestionOfDso] = Field(description="per DSO")
    congestion_seconds: float = Field(
        description="[s, scenario] above 100 % loading from the first whole ISP on, summed over the DSOs "
        "(the same figure as the run's congestion_seconds)"
    )
    peak_loading_percent: float
    der_mwh_tso: float = Field(description="[MWh] DER energy activated for the TSO")
    der_mwh_dso: float = Field(description="[MWh] DER energy bought by the DSOs")
    der_mwh_commercial: float
    commercial_mwh: float
    opposite_activations: list[dict[str, Any]] = Field(description="TSO and DSO activations in opposite directions")
    opposite_mwh: float
    traffic_by_link: dict[str, Traffic] = Field(description="'sender role->receiver role'")
    messages: int
    bytes: int
    mol_to_accepted_ms: LinkPercentiles | None = Field(description="[ms, wall] MOL sent to offers accepted")
    compute_ms: dict[str, dict[str, float]] = Field(description="[ms, wall] each operator's computation time")
    flex_activations: list[dict[str, Any]]
    market_results: list[dict[str, Any]] | None = None


class RunSummary(_Model):
    """``summary.json``: the outcome of one run."""

    scenario: str
    coordination: str = Field(description="the coordination scheme (actors.coordination)")
    dso_limits_mw: dict[str, float] = Field(description="[MW] bid -> upper bound the DSO validated it to")
    validations: dict[str, dict[str, Any]] = Field(description="bid -> the DSO's verdict that set its bound")
    mol_iterations: dict[str, int] = Field(description="DSO -> rounds of the merit order list")
    mol_fallbacks: list[str] = Field(description="'dso:mol:fallback' for each validation that missed its window")
    congestion_seconds: float = Field(
        description="[s, scenario] above 100 % loading from the first whole ISP on (before it no scheme has "
        "a market), summed over the DSOs"
    )
    max_line_loading_percent: float
    max_loading_element: str | None = Field(description="the most loaded element, e.g. line:behind-coupling")
    max_loading_at: str | None = Field(description="scenario instant of the highest loading (ISO 8601)")
    activated_energy_mwh: float = Field(description="[MWh] aFRR energy of the last ISP's activations")
    max_delta_setpoint_mw: dict[str, float] = Field(description="[MW] BSP -> largest delta setpoint")
    setpoints_sent: int
    setpoints_missed: int = Field(description="expired + lost")
    setpoints_expired: int
    setpoints_expired_max_age_ms: float | None = Field(description="[ms, wall] oldest expired setpoint's age")
    setpoints_lost: int
    setpoints_lost_while_away: int = Field(description="lost while their BSP was restarting (not the transport)")
    rejoins: list[dict[str, Any]]
    late_cycles: int = Field(description="setpoint cycles the TSO started more than one period late (paced runs)")
    delivery_within_tolerance_ratio: float | None = Field(
        description="lowest share of steady cycles within the band in a monitoring period (actors.rules)"
    )
    non_compliant_bsps: list[str]
    notes: list[str] = Field(
        default_factory=list,
        description="why the run did less than its scenario asks: refused assets and bids, validation fallbacks, "
        "no setpoint sent",
    )
    real_time_limits: list[dict[str, Any]] = Field(description="the DSOs' termination signals")
    dso_schedule_changes: list[dict[str, Any]]
    faults_reported: list[dict[str, Any]]
    curtailments: list[dict[str, Any]]
    settlement: list[dict[str, Any]]
    messages: dict[str, int] = Field(description="type -> messages sent")
    rejected_messages: int = Field(description="refused on arrival by a check (the exchange log says which)")
    refused_messages: int = Field(description="valid, but refused by an actor as implausible")
    latency_ms: dict[str, Percentiles] = Field(description="[ms, wall] type -> one-way latency")
    latency_by_link_ms: dict[str, LinkPercentiles] = Field(
        description="[ms, wall] 'sender role->receiver role' -> one-way latency, presence messages left out"
    )
    clock_offsets_ms: dict[str, ClockOffset] = Field(description="actor -> its clock's offset (actors on own hosts)")
    latency_by_link_corrected_ms: dict[str, CorrectedLink]
    coordination_chain_ms: dict[str, Any] | None = Field(
        description="[ms, wall] the first ISP's MOL -> validation -> acceptance -> setpoint -> telemetry"
    )
    mol_validation_round_trip_ms: Percentiles
    dso_validation_compute_ms: Percentiles
    schemes: SchemeMetrics
    loop_stalls: dict[str, Any] | None = Field(default=None, description="[ms, wall] each process's event-loop stalls")
    bridges: dict[str, SiteBridge] | None = Field(
        default=None, description="BSP id -> its site bridge's latency (BSPs behind IEC 104 only)"
    )
    wall_clock_s: float | None = Field(default=None, description="[s, wall] the run's duration")
    speed: float | Literal["virtual"] | None = Field(
        default=None, description="scenario seconds per wall second, or 'virtual' (testbed.clock.VirtualClock)"
    )

    def write(self, path: Path) -> None:
        path.write_text(self.model_dump_json(indent=2) + "\n")


def load_summary(path: Path) -> RunSummary:
    """A run's ``summary.json`` (``path`` is the file or its run directory)."""
    file = path / "summary.json" if path.is_dir() else path
    return RunSummary.model_validate_json(file.read_text())
