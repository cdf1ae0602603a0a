"""An emulated BSP site on IEC 60870-5-104: ``tsodso emulate iec104-site``.

The controlled station (``gateway.iec104.ControlledStation``) of a BSP's fleet: each asset takes its aFRR
target from a setpoint command and follows it with the asset's ramp and first-order response
(``actors.bsp_core.AssetState``, the same model as the testbed's own BSP), in scenario time: a command's
time tag is the instant the fleet has reached when it arrives (without time tags, wall time x ``speed``).
Each command is answered with the asset's measured value of that instant, before the new target takes
effect; what the bridge reports as the BSP's telemetry is what the site measured. An asset's limit
commands (activation limits; a termination is a limit of 0) bound the targets of the setpoint commands
that follow, up and down, whatever the commands say.

Fault modes break chosen BSP rules through the bridge (:data:`SITE_FAULTS`; a test holds each to
exactly that set).
"""

import threading
import time
from datetime import UTC, datetime, timedelta

from tsodso.actors.bsp_core import AssetState
from tsodso.actors.config import BspConfig, Iec104Site
from tsodso.gateway.iec104 import AssetPoints, ControlledStation

SITE_FAULTS: dict[str, tuple[str, frozenset[str]]] = {
    "late-confirmation": (
        "confirms every third cycle's setpoint command one setpoint period late",
        frozenset({"BSP-TM-010"}),
    ),
    "stale-measurements": (
        "answers every command with the measured values of its first one (value and time tag)",
        frozenset({"BSP-SP-010"}),
    ),
    "ignores-commands": ("confirms setpoint commands and does not follow them", frozenset({"BSP-SP-010"})),
    "connection-drops": (
        "closes the connection after every eighth cycle's commands, listening again three setpoint periods later",
        frozenset({"BSP-TM-010"}),
    ),
}


def site_points(bsp: BspConfig, site: Iec104Site) -> dict[str, AssetPoints]:
    """The BSP's assets' information object addresses (configured, else the defaults)."""
    return {
        a: AssetPoints(p.setpoint_ioa, p.delivered_ioa, p.limit_up_ioa, p.limit_down_ioa)
        for a, p in site.points_of([x.asset_id for x in bsp.assets]).items()
    }


class SiteEmulator:
    """A BSP's site: its fleet behind a controlled station (see the module's docstring). ``start`` and
    ``stop``, or use as a context manager."""

    def __init__(
        self,
        bsp: BspConfig,
        site: Iec104Site | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        fault: str | None = None,
        setpoint_period_s: float = 4.0,
        speed: float = 1.0,
    ):
        if fault is not None and fault not in SITE_FAULTS:
            raise ValueError(f"unknown iec104-site fault {fault!r} (faults: {', '.join(SITE_FAULTS)})")
        site = site or bsp.iec104 or Iec104Site()
        self.fault = fault
        self.period_wall_s = setpoint_period_s / speed
        self.speed = speed
        self.fleet = {a.asset_id: AssetState(a) for a in bsp.assets}
        self.targets = {a: 0.0 for a in self.fleet}
        self.limits_mw: dict[str, dict[str, float]] = {"up": {}, "down": {}}  # the limit commands' values
        self.fleet_at: dict[str, datetime | None] = {a: None for a in self.fleet}
        self.first_asset = bsp.assets[0].asset_id
        self.cycles = 0  # commands to the first asset: one per setpoint cycle
        self.commands = 0
        self._first: dict[str, tuple[float, datetime]] = {}  # stale-measurements: the first answers
        self._wall0 = (datetime.now(UTC), time.monotonic())
        self.station = ControlledStation(
            host or site.host,
            port or site.port,
            site.common_address,
            site_points(bsp, site),
            self.on_command,
            on_limit=self.on_limit,
            time_tag=site.time_tag,
            scale_mw=site.scale_mw,
        )

    def _instant(self, tag: datetime | None) -> datetime:
        if tag is not None:
            return tag
        origin, t0 = self._wall0
        return origin + timedelta(seconds=(time.monotonic() - t0) * self.speed)

    def on_command(self, asset: str, target_mw: float, tag: datetime | None) -> bool:
        """An asset's setpoint: the fleet reaches the command's instant under the previous target, the
        site answers with what it measures then, and the new target takes effect."""
        self.commands += 1
        if asset == self.first_asset:
            self.cycles += 1
        at = self._instant(tag)
        state, last = self.fleet[asset], self.fleet_at[asset]
        if last is not None and at > last:
            state.step(self.targets[asset], min((at - last).total_seconds(), 3600.0))
        if last is None or at > last:
            self.fleet_at[asset] = at
        if self.fault != "ignores-commands":
            self.targets[asset] = self._bounded(asset, target_mw)
        if self.fault == "late-confirmation" and self.cycles % 3 == 0:
            time.sleep(self.period_wall_s)
        mw, when = state.delta_mw, at
        if self.fault == "stale-measurements":
            mw, when = self._first.setdefault(asset, (mw, at))
        self.station.report(asset, mw, when)
        if self.fault == "connection-drops" and self.cycles % 8 == 0 and asset == list(self.fleet)[-1]:
            threading.Thread(target=self._drop, daemon=True).start()
        return True

    def _bounded(self, asset: str, target_mw: float) -> float:
        up, down = self.limits_mw["up"].get(asset, float("inf")), self.limits_mw["down"].get(asset, float("inf"))
        return max(-down, min(up, target_mw))

    def on_limit(self, asset: str, direction: str, limit_mw: float, tag: datetime | None) -> bool:
        """An asset's activation limit in one direction: the targets of the commands that follow are held
        within ``limit_mw`` that way (as the testbed's BSP applies a limit from its next setpoint on)."""
        self.limits_mw[direction][asset] = abs(limit_mw)
        return True

    def _drop(self) -> None:
        time.sleep(0.05)  # the confirmation goes out first
        self.station.stop()
        time.sleep(3 * self.period_wall_s)
        self.station.start()

    def start(self) -> "SiteEmulator":
        self.station.start()
        return self

    def stop(self) -> None:
        self.station.stop()

    def __enter__(self) -> "SiteEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
