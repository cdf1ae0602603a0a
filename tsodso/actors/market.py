"""Clearing flexibility needs against offers: the three rules the coordination schemes use
(CS review Table I). Pure functions over plain data; the actors put them on the bus.

- :func:`clear_in_order`: needs served one after the other, each by the offers that cover it at the
  lowest price per unit of need (a local market, a TSO's merit order, a DSO's priority);
- :func:`joint_dispatch`: one linear programme for all needs at once, minimising total activation
  cost (the common TSO-DSO market): every activation counts for every need it affects, so a DER that
  relieves a congestion and balances the system is paid once, and a DSO's curtailment that makes
  the system short is paid for by the balancing it then needs;
- :func:`clear_by_willingness`: needs served in order of willingness to pay, each only by offers at
  or below its price (the integrated flexibility market's independent operator).

Quantities: balancing and commercial needs in MW; congestion needs in percentage points of loading
with each offer's effectiveness (points per MW) from the DSO's power flow.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linprog

from tsodso.schemas.codes import Direction

UNSERVED_EUR_PER_UNIT = 10_000.0  # penalty for need the offers cannot cover (keeps the LP feasible)


@dataclass(frozen=True)
class Offer:
    bid_id: str
    bsp_id: str
    direction: Direction
    price_eur_per_mwh: float
    available_mw: float


@dataclass(frozen=True)
class Need:
    need_id: str
    buyer: str  # 'tso/tso', 'dso/dso1', 'bsp/brp1'
    kind: str  # balancing | congestion | commercial
    quantity: float  # MW, or % of loading for congestion
    max_price_eur_per_mwh: float = float("inf")
    direction: Direction | None = None
    effectiveness: Mapping[str, float] | None = None  # bid id -> units of need per MW (congestion)

    def covers(self, offer: Offer) -> float:
        """Units of this need one MW of ``offer`` covers (negative: it makes the need larger)."""
        if self.effectiveness is not None:
            return self.effectiveness.get(offer.bid_id, 0.0)
        if self.direction is None:
            return 0.0
        return 1.0 if offer.direction == self.direction else -1.0


@dataclass(frozen=True)
class Award:
    need_id: str
    buyer: str
    bid_id: str
    mw: float
    price_eur_per_mwh: float


def _serve(need: Need, offers: Sequence[Offer], left: dict[str, float], price_cap: float) -> list[Award]:
    awards, remaining = [], need.quantity
    useful = [
        (o.price_eur_per_mwh / need.covers(o), o)
        for o in offers
        if need.covers(o) > 1e-9 and o.price_eur_per_mwh <= price_cap
    ]
    for _, o in sorted(useful, key=lambda x: (x[0], x[1].bid_id)):
        if remaining <= 1e-9:
            break
        mw = min(left[o.bid_id], remaining / need.covers(o))
        if mw > 1e-9:
            left[o.bid_id] -= mw
            remaining -= mw * need.covers(o)
            awards.append(Award(need.need_id, need.buyer, o.bid_id, mw, o.price_eur_per_mwh))
    return awards


def clear_in_order(needs: Sequence[Need], offers: Sequence[Offer]) -> list[Award]:
    """Serve ``needs`` in the order given, each with the cheapest offers per unit of need covered."""
    left = {o.bid_id: o.available_mw for o in offers}
    return [a for n in needs for a in _serve(n, offers, left, float("inf"))]


def clear_by_willingness(needs: Sequence[Need], offers: Sequence[Offer]) -> list[Award]:
    """Highest willingness to pay first; a need buys only offers priced at or below what it pays."""
    left = {o.bid_id: o.available_mw for o in offers}
    ordered = sorted(needs, key=lambda n: (-n.max_price_eur_per_mwh, n.need_id))
    return [a for n in ordered for a in _serve(n, offers, left, n.max_price_eur_per_mwh)]


def joint_dispatch(needs: Sequence[Need], offers: Sequence[Offer]) -> list[Award]:
    """Minimise total activation cost subject to every need: one activation ``q_b`` per offer,
    ``sum_b covers(n, b) q_b >= quantity_n`` for every need (unserved need at a penalty), and
    ``0 <= q_b <= available_b``. An activation is attributed to the needs it covers, a DSO's
    congestion need first (it is located), each up to what it still needs; the rest of it to the
    balancing need."""
    if not offers or not needs:
        return []
    n_b, n_n = len(offers), len(needs)
    cover = np.array([[n.covers(o) for o in offers] for n in needs])
    cost = np.concatenate([[o.price_eur_per_mwh for o in offers], np.full(n_n, UNSERVED_EUR_PER_UNIT)])
    a_ub = np.hstack([-cover, -np.eye(n_n)])  # -(cover q + slack) <= -quantity
    b_ub = -np.array([n.quantity for n in needs])
    bounds = [(0, o.available_mw) for o in offers] + [(0, None)] * n_n
    res = linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
    if res.status != 0:
        raise RuntimeError(f"joint dispatch failed: {res.message}")
    q = res.x[:n_b]
    awards: list[Award] = []
    still = {n.need_id: n.quantity for n in needs}
    order = sorted(range(n_n), key=lambda i: (needs[i].kind != "congestion", needs[i].need_id))
    for j, o in enumerate(offers):
        mw_left = float(q[j])
        for i in order:
            n = needs[i]
            if mw_left <= 1e-6 or cover[i, j] <= 1e-9 or still[n.need_id] <= 1e-9:
                continue
            mw = min(mw_left, still[n.need_id] / cover[i, j])
            still[n.need_id] -= mw * cover[i, j]
            mw_left -= mw
            awards.append(Award(n.need_id, n.buyer, o.bid_id, mw, o.price_eur_per_mwh))
        if mw_left > 1e-6:  # activated for the system as a whole: the balancing party takes it
            holder = next((n for n in needs if n.kind == "balancing" and n.covers(o) > 0), None)
            if holder is not None:
                awards.append(Award(holder.need_id, holder.buyer, o.bid_id, mw_left, o.price_eur_per_mwh))
    return [a for a in awards if a.mw > 1e-9]


def per_bid(awards: Sequence[Award]) -> dict[str, float]:
    """MW awarded per bid, over all buyers."""
    out: dict[str, float] = {}
    for a in awards:
        out[a.bid_id] = out.get(a.bid_id, 0.0) + a.mw
    return out


def unserved(needs: Sequence[Need], offers: Sequence[Offer], awards: Sequence[Award]) -> dict[str, float]:
    """Need left uncovered by ``awards`` (units of each need), counting every award for every need
    it affects (physics does not care who bought it)."""
    by_bid = per_bid(awards)
    offer = {o.bid_id: o for o in offers}
    return {n.need_id: max(0.0, n.quantity - sum(n.covers(offer[b]) * mw for b, mw in by_bid.items())) for n in needs}
