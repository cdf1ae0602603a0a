"""What the coordination schemes share: merit order ranking, offers and needs for the markets,
imbalance profiles and balancing needs, and how block activations move assets.

Which scheme does what is ``actors.coordination``'s registry (CS review Table I). Everything a DSO
or a market buys outside aFRR is a block for the ISP (:class:`FlexActivation`): the assets'
schedules move, the DSO sees it in its power flow and the TSO in its system imbalance (except where
the DSO balances its own area and keeps its interface on schedule).
"""

from datetime import datetime

from tsodso.actors.config import Scenario
from tsodso.actors.coordination import CoordinationScheme
from tsodso.actors.market import Need, Offer
from tsodso.actors.rules import ISP
from tsodso.schemas.codes import Connection, Direction
from tsodso.schemas.messages import EnergyBid, FlexActivation, FlexibilityNeed, MolEntry


def bid_destination(scheme: CoordinationScheme, bid_dsos: set[str], market_operator: str, tso: str) -> tuple[str, str]:
    """(role, id) a BSP sends a bid to: the market operator where the scheme has one, the DSO of its
    DER where DER bids go to the DSO (a bid with DERs in one grid), the TSO otherwise."""
    if scheme.der_bids_to == "mo":
        return "mo", market_operator
    if scheme.der_bids_to == "dso" and len(bid_dsos) == 1:
        return "dso", next(iter(bid_dsos))
    return "tso", tso


def dn_dsos(entry: EnergyBid | MolEntry) -> set[str]:
    """The DSOs whose grids hold an asset of the bid."""
    return {a.dso_id for a in entry.assets if a.connection == Connection.DN and a.dso_id}


def sign(direction: Direction) -> float:
    return 1.0 if direction == Direction.UP else -1.0


def asset_moves(f: FlexActivation) -> dict[str, float]:
    """How far a block activation moves each of its assets, by share (asset id -> MW, up +)."""
    total = sum(a.share_mw for a in f.assets)
    return {a.asset_id: sign(f.direction) * f.activated_mw * a.share_mw / total for a in f.assets} if total > 0 else {}


def ranked(bids: list[EnergyBid]) -> dict[str, MolEntry]:
    """Bids as merit order list entries, ranked by price per direction."""
    entries: dict[str, MolEntry] = {}
    for direction in (Direction.UP, Direction.DOWN):
        mine = sorted((b for b in bids if b.direction == direction), key=lambda b: (b.price_eur_per_mwh, b.bid_id))
        for rank, b in enumerate(mine, 1):
            entries[b.bid_id] = MolEntry(
                rank=rank,
                bid_id=b.bid_id,
                bsp_id=b.bsp_id,
                direction=direction,
                price_eur_per_mwh=b.price_eur_per_mwh,
                quantity_mw=b.quantity_mw,
                upper_bound_mw=b.quantity_mw,
                assets=b.assets,
            )
    return entries


def offers(entries: dict[str, MolEntry], taken: dict[str, float] | None = None) -> list[Offer]:
    """Market offers from list entries: what is left of each bid's upper bound."""
    taken = taken or {}
    return [
        Offer(
            e.bid_id, e.bsp_id, e.direction, e.price_eur_per_mwh, max(0.0, e.upper_bound_mw - taken.get(e.bid_id, 0.0))
        )
        for e in entries.values()
    ]


def market_need(n: FlexibilityNeed, buyer_role: str) -> Need:
    return Need(
        need_id=n.need_id,
        buyer=f"{buyer_role}/{n.buyer_id}",
        kind=n.kind,
        quantity=n.quantity,
        max_price_eur_per_mwh=n.max_price_eur_per_mwh,
        direction=n.direction,
        effectiveness=dict(n.effectiveness) if n.effectiveness is not None else None,
    )


def profile_at(profile: list[tuple[datetime, float]], t: datetime) -> float:
    """A piecewise-constant profile's value at ``t`` (0 before its first point)."""
    value = 0.0
    for at, mw in profile:
        if at <= t:
            value = mw
    return value


def peak_in_isp(profile: list[tuple[datetime, float]], isp: datetime) -> float:
    """The largest deviation (signed, MW) of a piecewise-constant profile within an ISP (the
    expected need: the scenario's imbalance is the parties' forecast)."""
    points = [isp] + [at for at, _ in profile if isp < at < isp + ISP]
    return max((profile_at(profile, t) for t in points), key=abs, default=0.0)


def system_imbalance_profile(scenario: Scenario, *, with_areas: bool) -> list[tuple[datetime, float]]:
    """The TSO's imbalance profile plus, when the TSO balances them, the DSO areas' (MW short +)."""
    profiles = [scenario.tso.imbalance] + ([d.area_imbalance for d in scenario.dsos] if with_areas else [])
    instants = sorted({at for p in profiles for at, _ in p})
    return [(t, sum(profile_at(p, t) for p in profiles)) for t in instants]


def balancing_need(scenario: Scenario, isp: datetime, buyer: str, *, with_areas: bool = True) -> FlexibilityNeed | None:
    """The TSO's balancing need for an ISP: its peak expected imbalance, in its direction."""
    peak = peak_in_isp(system_imbalance_profile(scenario, with_areas=with_areas), isp)
    if abs(peak) < 1e-6:
        return None
    return FlexibilityNeed(
        need_id=f"{buyer}-{isp:%Y%m%d%H%M}-balancing",
        buyer_id=buyer,
        kind="balancing",
        isp_start=isp,
        direction=Direction.UP if peak > 0 else Direction.DOWN,
        quantity=round(abs(peak), 4),
        unit="MW",
        max_price_eur_per_mwh=scenario.tso.max_price_eur_per_mwh,
    )
