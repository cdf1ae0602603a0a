"""A BSP whose fleet is a site on IEC 60870-5-104: the bridge of ``tsodso bridge iec104`` (docs/iec104.md).

On the bus it is the BSP: the same contract and decisions (``actors.bsp_core``: prequalification, bids,
acceptances, activation limits, what of a setpoint is admitted). Its fleet is not modelled: each admitted
setpoint becomes one setpoint command per asset to the site (``gateway.iec104.SiteLink``, time-tagged with
the setpoint's instant), and the telemetry it answers with is what the site measured at that instant. An
activation limit (a DSO's termination arrives as a limit too) is applied to the targets and also sent to
each asset's limit points, where the site has them: the largest deviation up and down the asset may
make now.
A site that does not take the command in time (not connected, no confirmation) makes the setpoint refused
with the reason, so the TSO knows; values the site did not refresh are sent as ``stale``. While the site's
connection is down the BSP's presence says 'offline' (the bridge stays on the bus), 'online' once it is back.
"""

from dataclasses import dataclass

from tsodso.actors.bsp import BSP
from tsodso.actors.bsp_core import SiteReading
from tsodso.actors.config import BspConfig, Iec104Site
from tsodso.gateway import Received
from tsodso.gateway.iec104 import AssetPoints, SiteLink, SiteUnavailable
from tsodso.schemas.codes import Quality
from tsodso.schemas.messages import ActivationLimit, DeltaSetpoint

SITE_SHARE_OF_PERIOD = 0.6
"""The part of a setpoint period (wall time) the site has to confirm and to measure: the telemetry is
owed within the period (BSP-TM-010), and the bus needs the rest."""

SITE_CONNECT_S = 20.0
"""[s, wall] How long a bridge waits for its site to accept the connection and start data transfer."""

VIRTUAL_WAIT_S = 10.0
"""[s, wall] In virtual time scenario time waits for the site: a site silent this long is not there."""


@dataclass(frozen=True)
class CommandTiming:
    """One setpoint's way through the bridge [ms, wall]: from its first command to the site's last
    confirmation and to its last measured value (None: it never came in time)."""

    cycle: int
    confirmed_ms: float
    measured_ms: float | None
    fresh: bool  # every asset's value was of the setpoint's instant


def site_link(config: BspConfig, period_wall_s: float, site: Iec104Site | None = None) -> SiteLink:
    """The link to ``config``'s site (``site``, else its ``iec104``, else the defaults), whose
    confirmations and measured values are waited for 60 % of a setpoint period of wall time
    (``period_wall_s``: infinite in virtual time, where the run waits for the site; then 10 s)."""
    if period_wall_s == float("inf"):
        period_wall_s = VIRTUAL_WAIT_S / SITE_SHARE_OF_PERIOD
    site = site or config.iec104 or Iec104Site()
    points = site.points_of([a.asset_id for a in config.assets])
    return SiteLink(
        site.host,
        site.port,
        site.common_address,
        {a: AssetPoints(p.setpoint_ioa, p.delivered_ioa, p.limit_up_ioa, p.limit_down_ioa) for a, p in points.items()},
        time_tag=site.time_tag,
        scale_mw=site.scale_mw,
        confirm_timeout_s=period_wall_s * SITE_SHARE_OF_PERIOD,
    )


class BridgedBSP(BSP):
    """The BSP of a site on IEC 104 (see the module's docstring)."""

    def __init__(self, gateway, clock, scenario, config: BspConfig, link: SiteLink):
        super().__init__(gateway, clock, scenario, config)
        self.link = link
        self.timings: list[CommandTiming] = []
        self.not_taken = 0
        self.limits_sent = 0  # activation limits the site confirmed on its limit points
        self.limits_not_taken = 0
        self.site_losses = 0  # times the site's connection went
        link.on_state = self._site_state

    def _site_state(self, connected: bool) -> None:
        """The site's connection is the BSP's presence: 'offline' (retained) while the site is gone, though
        the bridge stays on the bus and answers every setpoint with its refusal; 'online' once it is back."""
        if not connected:
            self.site_losses += 1
        self.log.warning(
            "IEC 104 site " + ("back" if connected else "lost"), site=self.link.where, state=self.link.state
        )
        self.gw.spawn(self.gw.announce("online" if connected else "offline"))

    async def on_limit(self, msg: Received[ActivationLimit]) -> None:
        await super().on_limit(msg)
        if self.core.limits.get(msg.body.bid_id) != msg.body.max_mw:
            return  # refused
        try:
            sent = await self.link.limit(msg.body.valid_from, self.core.asset_limits())
        except SiteUnavailable as e:
            self.limits_not_taken += 1
            self.log.warning("activation limit not taken by the site", bid=msg.body.bid_id, reason=str(e))
            return
        self.limits_sent += bool(sent)

    async def on_setpoint(self, msg: Received[DeltaSetpoint]) -> None:
        sp = msg.body
        why = self.core.setpoint_refusal(sp, msg.sender, self.clock.now())
        if why is not None:
            self.core.refused_setpoints += 1
            self.gw.refuse(msg, why)
            return
        targets, _ = self.core.new_targets(sp, self.asset_targets)
        try:
            site = await self.link.command(sp.instant, targets, self.link.confirm_timeout_s)
        except SiteUnavailable as e:
            self.core.refused_setpoints += 1
            self.not_taken += 1
            self.log.warning("setpoint not taken by the site", cycle=sp.cycle, reason=str(e))
            self.gw.refuse(msg, str(e))
            return
        self.timings.append(CommandTiming(sp.cycle, site.confirmed_ms, site.measured_ms, all(site.fresh.values())))
        readings = {
            a: SiteReading(
                site.values_mw.get(a, 0.0),
                Quality.GOOD if site.fresh[a] else Quality.STALE if a in site.values_mw else Quality.INVALID,
            )
            for a in targets
        }
        self.log.debug("site answered", cycle=sp.cycle, confirmed_ms=site.confirmed_ms, measured_ms=site.measured_ms)
        await self.answer(msg, *self.core.follow(sp, lambda _: targets, measured=readings))
