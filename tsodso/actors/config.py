"""What each actor is told by a scenario (scenario files are data: ../scenarios/*.yaml)."""

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from tsodso.actors import coordination as registry
from tsodso.actors import rules
from tsodso.actors.rules import ISP, isp_of
from tsodso.schemas.codes import Connection, Direction, SystemState
from tsodso.schemas.envelope import PartyId, UtcTime

SCHEMES: tuple[str, ...] = tuple(registry.SCHEMES)
"""The names of the TSO-DSO coordination schemes (CS review Table I; ``actors.coordination``)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class AssetConfig(_Model):
    """One unit of the BSP's portfolio (a plant, a DER park, a fleet)."""

    asset_id: PartyId = Field(description="the asset's id, unique in its BSP's portfolio")
    connection: Connection = Field(description="TN (transmission grid) or DN (a DSO's grid)")
    dso_id: PartyId | None = Field(default=None, description="DN only: the DSO whose grid it is connected to")
    connection_bus: str | None = Field(
        default=None, description="DN only: the bus of that DSO's grid it is connected to (tsodso grid show)"
    )
    capacity_up_mw: float = Field(ge=0, description="[MW]")
    capacity_down_mw: float = Field(ge=0, description="[MW]")
    ramp_rate_mw_per_min: float = Field(gt=0, description="[MW/min] physical ramp of the asset")
    time_constant_s: float = Field(ge=0, default=2.0, description="[s] first-order response")
    scheduled_mw: float = Field(default=0.0, description="[MW] day-ahead schedule (reference contribution)")

    @model_validator(mode="after")
    def _where(self) -> "AssetConfig":
        if self.connection == Connection.DN and not (self.dso_id and self.connection_bus):
            raise ValueError(f"asset {self.asset_id!r} is connected to a DN: give its dso_id and connection_bus")
        if self.connection == Connection.TN and (self.dso_id or self.connection_bus):
            raise ValueError(
                f"asset {self.asset_id!r} is connected to the TN: it has no dso_id or connection_bus (or use connection: DN)"
            )
        return self


class BidConfig(_Model):
    """One aFRR energy bid, offered for every ISP of the run."""

    bid_id: PartyId = Field(description="the bid's id, unique in its BSP")
    direction: Literal["up", "down"] = Field(description="up: more generation or less load; down: the opposite")
    quantity_mw: float = Field(gt=0, description="[MW] the most the bid delivers")
    price_eur_per_mwh: float = Field(description="[EUR/MWh] its energy price (the merit order ranks by it)")
    ramp_rate_mw_per_min: float = Field(gt=0, description="[MW/min] the bid's ramp: the setpoint changes no faster")
    assets: dict[str, float] = Field(description="asset id -> share of the quantity [MW]; the shares add up to it")

    @model_validator(mode="after")
    def _shares(self) -> "BidConfig":
        if not self.assets:
            raise ValueError(f"bid {self.bid_id!r} names no assets: give each asset's share, adding up to quantity_mw")
        if any(share <= 0 for share in self.assets.values()):
            raise ValueError(f"bid {self.bid_id!r}: every asset's share must be > 0 MW")
        total = sum(self.assets.values())
        if abs(total - self.quantity_mw) > 1e-6:
            shares = " + ".join(f"{a} {v:g}" for a, v in self.assets.items())
            raise ValueError(
                f"bid {self.bid_id!r}: the asset shares ({shares} = {total:g} MW) must add up to quantity_mw {self.quantity_mw:g}"
            )
        return self

    @property
    def code(self) -> Direction:
        return Direction.UP if self.direction == "up" else Direction.DOWN


class CommercialNeed(_Model):
    """A commercial party's own need for flexibility (a BRP short or long in its portfolio), bid into
    the integrated flexibility market only (CS review Table I, scheme 6)."""

    isp_start: UtcTime
    direction: Literal["up", "down"]
    quantity_mw: float = Field(gt=0, description="[MW]")
    max_price_eur_per_mwh: float = Field(description="[EUR/MWh] willingness to pay")


IOA = Annotated[int, Field(ge=1, le=16_777_215, description="information object address (3 octets)")]


class Iec104Points(_Model):
    """One asset's information objects at its site (IEC 60870-5-104; docs/iec104.md)."""

    setpoint_ioa: IOA = Field(
        description="the command that carries the asset's aFRR target: C_SE_TC_1 (short float with time tag) or, "
        "without time tags, C_SE_NC_1; [MW, deviation from schedule] / scale_mw"
    )
    delivered_ioa: IOA = Field(
        description="the measured value the site reports for it: M_ME_TF_1 (or M_ME_NC_1); the aFRR delta the "
        "asset delivers [MW, deviation from schedule] / scale_mw"
    )
    limit_up_ioa: IOA | None = Field(
        default=None,
        description="the command that carries the asset's upward activation limit, sent on each activation limit "
        "(a termination is one of 0): the largest upward deviation from schedule it may make [MW] / scale_mw, "
        "same type as the setpoint; none: the site has no such point (the bridge still applies the limit to the "
        "targets it sends)",
    )
    limit_down_ioa: IOA | None = Field(
        default=None, description="the same for the largest downward deviation [MW, a magnitude] / scale_mw"
    )


class Iec104Site(_Model):
    """A BSP whose fleet is a site spoken to over IEC 60870-5-104 (``tsodso bridge iec104``): the bridge is the
    controlling station (client), the site the controlled station (server)."""

    host: str = Field(default="127.0.0.1", description="the site's address")
    port: int = Field(default=2404, ge=1, le=65535, description="the site's IEC 104 port (2404 is the standard's)")
    common_address: int = Field(default=1, ge=1, le=65534, description="the site's ASDU common address (station)")
    time_tag: bool = Field(
        default=True,
        description="true: commands and measurements carry a CP56Time2a time tag, the setpoint's scenario instant "
        "(C_SE_TC_1, M_ME_TF_1); false: C_SE_NC_1, M_ME_NC_1",
    )
    scale_mw: float = Field(default=1.0, gt=0, description="[MW] per unit of a value on the wire")
    points: dict[str, Iec104Points] = Field(
        default_factory=dict,
        description="asset id -> its points; an asset not given gets setpoint 1000+i, delivered 2000+i, limits "
        "up 3000+i and down 4000+i (i: its place in the BSP's assets, from 0)",
    )

    def points_of(self, asset_ids: list[str]) -> dict[str, Iec104Points]:
        """Every asset's points: as configured, else the defaults."""
        return {
            a: self.points.get(a)
            or Iec104Points(
                setpoint_ioa=1000 + i, delivered_ioa=2000 + i, limit_up_ioa=3000 + i, limit_down_ioa=4000 + i
            )
            for i, a in enumerate(asset_ids)
        }


class BspConfig(_Model):
    """A balancing service provider: its portfolio and its bids."""

    id: PartyId
    reference_mw: float = Field(description="[MW] the BSP's reference (scheduled) output")
    assets: list[AssetConfig] = Field(description="its assets (prequalified with the TSO and, DN ones, their DSO)")
    bids: list[BidConfig] = Field(description="its aFRR energy bids, each from some of its assets")
    follow_factor: float = Field(default=1.0, gt=0, description="1: follows setpoints; <1 under-delivers")
    needs: list[CommercialNeed] = Field(default_factory=list, description="its own needs (integrated market only)")
    iec104: Iec104Site | None = Field(
        default=None,
        description="its fleet is a site behind an IEC 60870-5-104 bridge (tsodso bridge iec104, docs/iec104.md); "
        "none: the testbed models the fleet",
    )

    @model_validator(mode="after")
    def _portfolio(self) -> "BspConfig":
        assets = {a.asset_id: a for a in self.assets}
        if len(assets) != len(self.assets):
            raise ValueError(f"bsp {self.id!r}: asset ids must be unique")
        if self.iec104 is not None:
            if unknown := set(self.iec104.points) - set(assets):
                raise ValueError(
                    f"bsp {self.id!r}: iec104 points for {', '.join(sorted(unknown))}, not one of its assets "
                    f"({', '.join(assets)})"
                )
            used: dict[int, str] = {}
            for asset_id, p in self.iec104.points_of(list(assets)).items():
                for kind, ioa in (
                    ("setpoint_ioa", p.setpoint_ioa),
                    ("delivered_ioa", p.delivered_ioa),
                    ("limit_up_ioa", p.limit_up_ioa),
                    ("limit_down_ioa", p.limit_down_ioa),
                ):
                    if ioa is None:
                        continue
                    if ioa in used:
                        raise ValueError(
                            f"bsp {self.id!r}: iec104 {asset_id}.{kind} {ioa} is already {used[ioa]}: every "
                            "information object address of a site is used once"
                        )
                    used[ioa] = f"{asset_id}.{kind}"
        if len({b.bid_id for b in self.bids}) != len(self.bids):
            raise ValueError(f"bsp {self.id!r}: bid ids must be unique")
        for bid in self.bids:
            for asset_id, share in bid.assets.items():
                asset = assets.get(asset_id)
                if asset is None:
                    raise ValueError(
                        f"bid {bid.bid_id!r} names asset {asset_id!r}; {self.id}'s assets: {', '.join(assets)}"
                    )
                capacity = asset.capacity_up_mw if bid.direction == "up" else asset.capacity_down_mw
                if share > capacity + 1e-9:
                    raise ValueError(
                        f"bid {bid.bid_id!r} asks {share:g} MW {bid.direction} of asset {asset_id!r}, "
                        f"whose capacity_{bid.direction}_mw is {capacity:g}"
                    )
        return self


class Redispatch(_Model):
    """A change the DSO makes itself (known in its forecast and in real time)."""

    at: UtcTime = Field(description="from this instant on")
    element: str = Field(description="'sgen:<name>' or 'load:<name>'")
    delta_mw: float = Field(description="[MW] change of the element's injection (generation +, load -)")
    reason: str = Field(default="", description="why (for the reports)")


class GridChange(_Model):
    """A change the DSO did not forecast (it appears in real time only)."""

    at: UtcTime = Field(description="from this instant on")
    element: str = Field(description="'sgen:<name>' or 'load:<name>'")
    delta_mw: float = Field(description="[MW] change of the element's injection")


class Fault(_Model):
    """A fault in the DSO's grid, reported to the TSO (CS review Fig. 4)."""

    at: UtcTime = Field(description="when it happens")
    element: str = Field(description="e.g. 'line:south-pv'")
    fault_type: Literal["line_fault", "trafo_fault", "bus_fault", "protection_trip"] = "line_fault"
    lost_load_mw: float = 0.0
    lost_generation_mw: float = 0.0


class DsoConfig(_Model):
    """A distribution system operator and its grid."""

    id: PartyId
    grid: str = Field(
        description="a grid builder (nl_afrr_congestion, rural_village), simbench:<code> or a pandapower JSON file "
        "(relative to the scenario file)"
    )
    interface: str = Field(default="trafo:coupling", description="the TSO-DSO coupling element")
    conditions: list[GridChange] = Field(
        default_factory=list,
        description="the grid's state in the run, as changes to its model's injections the DSO forecasts "
        "(a heat-led CHP, an evening peak): in its power flows from their instant on; prequalification "
        "checks the model as it is",
    )
    redispatch: list[Redispatch] = Field(default_factory=list, description="its own redispatch actions")
    unforecast: list[GridChange] = Field(
        default_factory=list, description="changes nobody forecast: seen in its real-time power flow only"
    )
    faults: list[Fault] = Field(default_factory=list, description="faults in its grid")
    curtailable_load_mw: float = Field(default=5.0, ge=0, description="[MW] what the DSO can shed on request")
    validation_delay_s: float = Field(default=0.0, ge=0, description="[s, wall] slows MOL answers (tests)")
    area_imbalance: list[tuple[UtcTime, float]] = Field(
        default_factory=list,
        description="its area's deviation from the interface schedule, piecewise constant: MW short (+) or long (-); "
        "part of the system imbalance, balanced by the DSO itself only in the fragmented scheme",
    )
    max_price_eur_per_mwh: float = Field(default=500.0, description="[EUR/MWh] willingness to pay for flexibility")
    congestion_margin_percent: float = Field(default=2.0, ge=0, description="[%] congestion is relieved to 100 - this")


class Emergency(_Model):
    """A change of the system state the TSO announces, with a curtailment request (CS review Fig. 4)."""

    at: UtcTime = Field(description="when the TSO announces it")
    state: SystemState = Field(description="the system state: normal, alert, emergency, blackout, restoration")
    curtail_dso: PartyId | None = Field(default=None, description="the DSO asked to curtail (none: no request)")
    target: Literal["load", "generation"] = Field(default="load", description="what the DSO curtails")
    amount_mw: float = Field(default=0.0, description="[MW] how much")
    duration_s: float = Field(default=900.0, description="[s] for how long")


class TsoConfig(_Model):
    """The transmission system operator: the system's imbalance and how it activates aFRR."""

    id: PartyId = "tso"
    area: str = Field(default="NL", description="its control area (a name; the bids' market area)")
    imbalance: list[tuple[UtcTime, float]] = Field(
        description="system imbalance, piecewise constant from each instant: MW short (+) or long (-)"
    )
    activation_delay_s: float = Field(default=60.0, ge=0, description="[s] LFC reaction before the first setpoint")
    setpoint_step_s: float = Field(
        default=rules.RAMP_STEP_S, gt=0, description="[s] the setpoint changes at most this often (CS review §IV.B)"
    )
    monitoring_period_s: float = Field(
        default=rules.MONITORING_PERIOD_S, gt=0, description="[s] requested vs delivered (CS review §IV.A)"
    )
    mol_timeout_s: float = Field(default=2.0, gt=0, description="[s, wall] wait for each DSO's validation")
    mol_retries: int = Field(default=1, ge=0, description="re-sends of the list to a DSO that has not answered")
    mol_fallback: Literal["exclude_dn", "unvalidated"] = Field(
        default="exclude_dn",
        description="when a DSO does not answer: leave out the bids with assets in its grid (exclude_dn), or "
        "activate them as offered, as without coordination (unvalidated)",
    )
    emergencies: list[Emergency] = Field(default_factory=list, description="system state changes it announces")
    max_price_eur_per_mwh: float = Field(default=500.0, description="[EUR/MWh] willingness to pay for balancing")


class LinkConfig(_Model):
    """Conditions of the links between actors (gateway.links), by sender->receiver pattern."""

    between: str = Field(description="'sender->receiver' with role/id and * wildcards, e.g. 'tso/*->dso/*'")
    delay_ms: float = Field(default=0.0, ge=0, description="[ms, wall] fixed delay")
    jitter: Literal["none", "normal", "lognormal", "uniform"] = "none"
    jitter_ms: float = Field(
        default=0.0, ge=0, description="[ms] normal sd / uniform width; lognormal: sigma (unitless)"
    )
    drop_probability: float = Field(default=0.0, ge=0, le=1)
    outages: list[tuple[UtcTime, UtcTime]] = Field(
        default_factory=list, description="link down from t1 to t2 (scenario time)"
    )


class LabHost(_Model):
    """One host of the network lab (``testbed.lab``): the link between it and the lab's switch, in
    each direction."""

    rate_kbit: float | None = Field(default=None, gt=0, description="[kbit/s] rate limit (tc tbf, or netem's rate)")
    delay_ms: float = Field(
        default=0.0,
        ge=0,
        description="[ms, wall] one-way delay (tc netem; a kernel without netem gets the same delay per message "
        "from the gateways, as application-level link conditions, and the run says so)",
    )
    jitter_ms: float = Field(default=0.0, ge=0, description="[ms] standard deviation of the delay (normal)")
    loss_percent: float = Field(default=0.0, ge=0, le=100, description="[%] packets lost (netem), messages (fallback)")
    partitions: list[tuple[UtcTime, UtcTime]] = Field(
        default_factory=list, description="the host's link down from t1 to t2 (scenario time): a real partition"
    )


class LabConfig(_Model):
    """The network lab: every actor on its own host (a network namespace) and the broker on another,
    joined by a switch (a bridge), real TCP between them (``tsodso up SCENARIO --lab``)."""

    subnet: str = Field(
        default="10.77.0.0/24",
        description="IPv4 /24 of the lab: .1 the switch, .10 the broker (a cluster's nodes .10, .11, ...), "
        "the actors from .20",
    )
    broker_nodes: int = Field(
        default=1,
        ge=1,
        le=9,
        description="1: Mosquitto on host 'broker'; 3 or more: a NATS cluster, each node on its own host "
        "('broker-1', 'broker-2', ...), the actors failing over between them",
    )
    hosts: dict[str, LabHost] = Field(
        default_factory=dict,
        description="the link of a host, by 'role/id' of its actor (e.g. 'dso/dso1'), 'broker' or 'broker-N'; "
        "hosts not named get a plain link",
    )

    @property
    def broker_hosts(self) -> list[str]:
        return ["broker"] if self.broker_nodes == 1 else [f"broker-{k + 1}" for k in range(self.broker_nodes)]


class SecurityConfig(_Model):
    """Who must sign (docs/security.md). Every party signs with its own key and every receiver that
    holds the public keys checks; a device under test that cannot sign is let in only when named here."""

    unsigned: list[str] = Field(
        default_factory=list,
        description="parties that may send unsigned messages: 'role/id' or 'role/*' (e.g. 'bsp/bsp1')",
    )
    max_clock_skew_s: float = Field(
        default=5.0, gt=0, le=300, description="[s] how far a message's created_at may lead the receiver's clock"
    )

    @field_validator("unsigned")
    @classmethod
    def _parties(cls, value: list[str]) -> list[str]:
        import re

        for party in value:
            if not re.fullmatch(r"(tso|dso|bsp|mo)/([a-z0-9][a-z0-9_-]{0,63}|\*)", party):
                raise ValueError(f"{party!r} is not 'role/id' or 'role/*' with role tso, dso, bsp or mo")
        return value


class Scenario(_Model):
    name: str = Field(description="the scenario's name (in the summary and the reports)")
    description: str = Field(default="", description="what it shows, for readers")
    start: UtcTime = Field(description="scenario time of the first setpoint cycle")
    end: UtcTime = Field(description="scenario time the run ends (exclusive)")
    setpoint_period_s: float = Field(
        default=rules.SETPOINT_PERIOD_S,
        ge=rules.SETPOINT_PERIOD_S,
        description="[s] aFRR delta setpoint period, at least the 4-s resolution (CS review §IV.A)",
    )
    coordination: Annotated[
        str,
        WithJsonSchema(
            {
                "anyOf": [
                    {"enum": [*registry.SCHEMES, *(k for k in registry.SWITCH if isinstance(k, str))]},
                    {"type": "boolean"},
                ]
            }
        ),
    ] = Field(
        default=registry.DEFAULT,
        description=f"TSO-DSO coordination scheme (CS review Table I): {', '.join(registry.SCHEMES)}; "
        "true/on = hybrid, false/off = tso_managed",
    )
    market_operator: PartyId = Field(default="mo", description="id of the independent market operator (scheme 6)")
    tso: TsoConfig = Field(description="the TSO")
    dsos: list[DsoConfig] = Field(description="the DSOs, each with its grid")
    bsps: list[BspConfig] = Field(description="the BSPs, each with its assets and bids")
    links: list[LinkConfig] = Field(
        default_factory=list, description="conditions of the links between actors (delay, jitter, drop, outages)"
    )
    security: SecurityConfig = Field(default_factory=SecurityConfig, description="identities and what is refused")
    lab: LabConfig = Field(
        default_factory=LabConfig, description="hosts and links of the network lab (tsodso up --lab; Linux, root)"
    )

    @field_validator("coordination", mode="before")
    @classmethod
    def _scheme(cls, value: object) -> object:
        """A scheme's name, or the former on/off switch (``actors.coordination.SWITCH``)."""
        if isinstance(value, bool | str):
            value = registry.SWITCH.get(value, value)
            registry.scheme(str(value))  # ValueError naming the known schemes
        return value

    @model_validator(mode="after")
    def _parties(self) -> "Scenario":
        if self.end <= self.start:
            raise ValueError(f"end {self.end:%Y-%m-%dT%H:%M:%SZ} must be after start {self.start:%Y-%m-%dT%H:%M:%SZ}")
        dsos = [d.id for d in self.dsos]
        ids = [self.tso.id, *dsos, *(b.id for b in self.bsps)]
        if self.scheme.market_operator:
            ids.append(self.market_operator)
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise ValueError(f"every actor needs its own id: {', '.join(twice)} used twice")
        for bsp in self.bsps:
            for asset in bsp.assets:
                if asset.dso_id is not None and asset.dso_id not in dsos:
                    raise ValueError(
                        f"asset {asset.asset_id!r} of {bsp.id} names dso_id {asset.dso_id!r}; the scenario's DSOs: "
                        f"{', '.join(dsos) or 'none'}"
                    )
        hosts = {*self.lab.broker_hosts, *(f"{role}/{ident}" for role, ident in self.actors())}
        for host, link in self.lab.hosts.items():
            if host not in hosts:
                raise ValueError(
                    f"lab.hosts: {host!r} is no host of this scenario; its hosts: {', '.join(sorted(hosts))}"
                )
            for t1, t2 in link.partitions:
                if t2 <= t1:
                    raise ValueError(
                        f"lab.hosts.{host}: partition ends {t2:%H:%M:%S}, not after it begins {t1:%H:%M:%S}"
                    )
        for e in self.tso.emergencies:
            if e.curtail_dso is not None and e.curtail_dso not in dsos:
                raise ValueError(
                    f"emergency at {e.at:%H:%M:%S} curtails {e.curtail_dso!r}; the DSOs: {', '.join(dsos)}"
                )
        return self

    @property
    def scheme(self) -> registry.CoordinationScheme:
        """What the scenario's coordination scheme implies (``actors.coordination``)."""
        return registry.scheme(self.coordination)

    @property
    def dso_validates(self) -> bool:
        """The DSO checks DN assets and activations against its grid (every scheme but TSO-managed)."""
        return self.scheme.dso_validates

    def actors(self) -> list[tuple[str, str]]:
        """(role, id) of every actor the run needs: the TSO, the DSOs, the BSPs and, where the scheme has
        one, the market operator."""
        out = [("tso", self.tso.id), *(("dso", d.id) for d in self.dsos), *(("bsp", b.id) for b in self.bsps)]
        if self.scheme.market_operator:
            out.append(("mo", self.market_operator))
        return out

    def isps(self) -> list[datetime]:
        """Starts of the ISPs that overlap the run."""
        out, t = [], isp_of(self.start)
        while t < self.end:
            out.append(t)
            t += ISP
        return out
