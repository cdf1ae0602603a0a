"""The six TSO-DSO coordination schemes of seed 000 Table I as policies of the same actors.

The scenario's ``coordination`` names the scheme; the actors ask this module what it implies. Per
ISP, the inputs are the same in every scheme: the BSPs' bids, the TSO's balancing need (the
system imbalance), each DSO's congestion needs (its AC power flow of the ISP) and, in the
fragmented scheme, each DSO's area imbalance. What differs is who sees which bids and who buys first:

============== ======================================================================================
tso_managed    Centralised AS market. Every bid goes to the TSO; no DSO validation, no real-time
               limits; the DSO is passive and its congestion stays.
dso_managed    Local AS market. DER bids go to their DSO, which buys first for its congestion
               (cheapest per % relieved) one minute before gate closure, then validates the rest on
               its grid and forwards it to the TSO.
fragmented     Shared balancing responsibility. DER bids go to their DSO, which relieves its
               congestion and balances its own area (keeping the interface on schedule); the TSO
               balances the transmission area with TN bids only: it never reaches a DER.
hybrid         Multi-level (§IV.B, the reference scenario). Every bid goes to the TSO, whose merit
               order list each DSO validates; the TSO then tells each DSO what it expects to
               activate and the DSO relieves what congestion remains with the capacity left.
common_market  Common TSO-DSO market. Every bid goes to the TSO; each DSO validates the list and
               returns its congestion needs; the TSO clears all needs at once by a linear programme
               minimising total activation cost (actors.market.joint_dispatch).
integrated_    Integrated flexibility market. Every bid goes to an independent market operator (an
market         actor of its own, actors.mo), as do the TSO's, the DSOs' and commercial parties'
               needs; the DSOs validate its list; highest willingness to pay is served first.
============== ======================================================================================

Everything a DSO or a market buys outside aFRR is a block for the ISP (:class:`FlexActivation`):
the assets' schedules move, the DSO sees it in its power flow and the TSO in its system imbalance
(except in the fragmented scheme, where the DSO keeps its interface on schedule).
"""

from datetime import datetime, timedelta

from actors.config import ISP, Scenario
from actors.market import Need, Offer
from schemas.codes import Connection, Direction
from schemas.messages import EnergyBid, FlexActivation, FlexibilityNeed, MolEntry

LOCAL_GATE = timedelta(seconds=60)  # DSO local markets close this long before the ISP's gate closure
MARKET_GATE = timedelta(seconds=30)  # the market operator clears this long before the ISP starts


def bid_destination(scheme: str, bid_dsos: set[str], market_operator: str, tso: str) -> tuple[str, str]:
    """(role, id) a BSP sends a bid to: the market operator in the integrated market, the DSO of its
    DER in the local-market schemes, the TSO otherwise."""
    if scheme == "integrated_market":
        return "mo", market_operator
    if scheme in ("dso_managed", "fragmented") and len(bid_dsos) == 1:
        return "dso", next(iter(bid_dsos))
    return "tso", tso


def tso_balances_areas(scheme: str) -> bool:
    """Whether the TSO balances the whole system (DSO areas and DSO activations included)."""
    return scheme != "fragmented"


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
            entries[b.bid_id] = MolEntry(rank=rank, bid_id=b.bid_id, bsp_id=b.bsp_id, direction=direction,
                                         price_eur_per_mwh=b.price_eur_per_mwh, quantity_mw=b.quantity_mw,
                                         upper_bound_mw=b.quantity_mw, assets=b.assets)  # fmt: skip
    return entries


def offers(entries: dict[str, MolEntry], taken: dict[str, float] | None = None) -> list[Offer]:
    """Market offers from list entries: what is left of each bid's upper bound."""
    taken = taken or {}
    return [Offer(e.bid_id, e.bsp_id, e.direction, e.price_eur_per_mwh, max(0.0, e.upper_bound_mw - taken.get(e.bid_id, 0.0)))
            for e in entries.values()]  # fmt: skip


def market_need(n: FlexibilityNeed, buyer_role: str) -> Need:
    return Need(need_id=n.need_id, buyer=f"{buyer_role}/{n.buyer_id}", kind=n.kind, quantity=n.quantity,
                max_price_eur_per_mwh=n.max_price_eur_per_mwh, direction=n.direction,
                effectiveness=dict(n.effectiveness) if n.effectiveness is not None else None)  # fmt: skip


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
    return FlexibilityNeed(need_id=f"{buyer}-{isp:%Y%m%d%H%M}-balancing", buyer_id=buyer, kind="balancing",
                           isp_start=isp, direction=Direction.UP if peak > 0 else Direction.DOWN,
                           quantity=round(abs(peak), 4), unit="MW",
                           max_price_eur_per_mwh=scenario.tso.max_price_eur_per_mwh)  # fmt: skip
