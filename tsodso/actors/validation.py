"""The DSO's validation of a merit order list (CS review Fig. 4: 'check and clear invalid bid').

Rule: limits hold jointly along the merit order. Per direction, bids are taken cheapest first; each
is activated on top of the cheaper ones at *their* validated limits. A bid whose full activation
breaks (or worsens) no line, transformer or voltage limit in the AC power flow is accepted;
otherwise its largest allowed activation is found by bisection to ``step_mw`` (0.01 MW), so that the
limit is tight: ``step_mw`` more would violate, given the cheaper bids. A limit below the bid's
minimum quantity (or zero) rejects it. Each verdict names the element that decided it and its
loading at the full bid.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tsodso.actors.powerflow import FastAC, GridState, Violation
from tsodso.schemas.codes import BidStatus, Connection, Direction
from tsodso.schemas.messages import BidValidation, MolEntry


@dataclass
class Validated:
    """The verdicts, and the flex injections (bus -> MW) of every bid at its limit, per direction."""

    results: list[BidValidation]
    injections: dict[Direction, dict[int, float]]


def per_mw_injection(entry: MolEntry, buses: dict[str, int], dso_id: str) -> dict[int, float]:
    """Injection per MW of the bid's activation, per bus of this DSO (generation positive)."""
    sign = 1.0 if entry.direction == Direction.UP else -1.0
    out: dict[int, float] = {}
    for asset in entry.assets:
        if asset.connection == Connection.DN and asset.dso_id == dso_id:
            bus = buses[asset.connection_bus or ""]
            out[bus] = out.get(bus, 0.0) + sign * asset.share_mw / entry.quantity_mw
    return out


def largest_activation(
    fast: FastAC,
    base: dict[int, float] | np.ndarray,
    per_mw: dict[int, float] | np.ndarray,
    upper_mw: float,
    *,
    reference: GridState | None = None,
    step_mw: float = 0.01,
) -> tuple[float, list[Violation]]:
    """The largest activation ``a`` in [0, upper] (to ``step_mw``, rounded down) such that injecting
    ``per_mw * a`` on top of ``base`` breaks no limit, and the violations at ``upper``.
    Assumes one crossing (loading grows with the activation), which holds on radial feeders."""
    base_vec = base if isinstance(base, np.ndarray) else fast.vector(base)
    per_vec = per_mw if isinstance(per_mw, np.ndarray) else fast.vector(per_mw)
    reference = reference or fast.solve(base_vec)

    def violations(a: float) -> list[Violation]:
        return fast.violations(fast.solve(base_vec + per_vec * a), reference)

    at_full = violations(upper_mw)
    if not at_full:
        return upper_mw, []
    if violations(step_mw):  # nothing fits: no bisection needed
        return 0.0, at_full
    lo, hi = step_mw, upper_mw
    while hi - lo > step_mw / 4:
        mid = (lo + hi) / 2
        if violations(mid):
            hi = mid
        else:
            lo = mid
    return math.floor(lo / step_mw + 1e-9) * step_mw, at_full


def validate_mol(
    fast: FastAC,
    entries: Sequence[MolEntry],
    dso_id: str,
    bus_of: Callable[[str], int],
    *,
    base: dict[int, float] | None = None,
    step_mw: float = 0.01,
) -> Validated:
    """Validate the bids of a merit order list on the DSO's grid (see the module docstring).
    ``base``: the DSO's forecast injections for the ISP (its own redispatch), bus -> MW.

    A bus where a cheaper bid of the same direction was cut is full: ``step_mw`` more there breaks
    a limit (the limits are tight), so a later bid that would put at least that much there with its
    smallest activation is rejected without another power flow."""
    base_vec = fast.vector(base or {})
    reference = fast.solve(base_vec)
    results: list[BidValidation] = []
    injections: dict[Direction, dict[int, float]] = {}
    for direction in (Direction.UP, Direction.DOWN):
        cum = base_vec.copy()
        full_buses: dict[int, str] = {}  # bus -> element that filled it, for this direction
        for entry in sorted((e for e in entries if e.direction == direction), key=lambda e: e.rank):
            here = [a for a in entry.assets if a.connection == Connection.DN and a.dso_id == dso_id]
            if not here:
                results.append(
                    BidValidation(
                        bid_id=entry.bid_id,
                        status=BidStatus.ACCEPTED,
                        lower_bound_mw=entry.lower_bound_mw,
                        upper_bound_mw=entry.upper_bound_mw,
                        reason=f"no asset in the grid of {dso_id}",
                    )
                )
                continue
            buses: dict[str, int] = {}
            unknown = []
            for asset in here:
                try:
                    buses[asset.connection_bus or ""] = bus_of(asset.connection_bus or "")
                except KeyError:
                    unknown.append(asset.connection_bus)
            if unknown:
                results.append(
                    BidValidation(
                        bid_id=entry.bid_id,
                        status=BidStatus.REJECTED,
                        upper_bound_mw=0,
                        reason=f"connection bus {', '.join(map(str, unknown))} not in the grid of {dso_id}",
                    )
                )
                continue
            per_mw = per_mw_injection(entry, buses, dso_id)
            saturated = [b for b, k in per_mw.items() if b in full_buses and abs(k) >= 1.0 - 1e-9]
            if saturated:
                element = full_buses[saturated[0]]
                results.append(
                    BidValidation(
                        bid_id=entry.bid_id,
                        status=BidStatus.REJECTED,
                        upper_bound_mw=0.0,
                        limiting_element=element,
                        reason=f"{element} already at its limit with the cheaper bids",
                    )
                )
                continue
            per_vec = fast.vector(per_mw)
            full = entry.upper_bound_mw
            limit, at_full = largest_activation(fast, cum, per_vec, full, reference=reference, step_mw=step_mw)
            if not at_full:
                results.append(
                    BidValidation(
                        bid_id=entry.bid_id,
                        status=BidStatus.ACCEPTED,
                        lower_bound_mw=entry.lower_bound_mw,
                        upper_bound_mw=full,
                    )
                )
                cum = cum + per_vec * full
                continue
            worst = at_full[0]
            if len(per_mw) == 1:  # a one-bus bid was cut: step_mw more at that bus breaks a limit
                full_buses.setdefault(next(iter(per_mw)), worst.element)
            kind = "loading" if worst.element.startswith(("line", "trafo")) else "voltage"
            common: dict[str, Any] = dict(
                bid_id=entry.bid_id,
                limiting_element=worst.element,
                loading_percent=round(worst.value, 3) if kind == "loading" else None,
                voltage_pu=round(worst.value, 4) if kind == "voltage" else None,
            )
            if limit < max(entry.lower_bound_mw, step_mw):
                results.append(
                    BidValidation(
                        status=BidStatus.REJECTED,
                        upper_bound_mw=0.0,
                        **common,
                        reason=f"any activation violates {worst.element}",
                    )
                )
                continue
            results.append(
                BidValidation(
                    status=BidStatus.LIMITED,
                    lower_bound_mw=min(entry.lower_bound_mw, limit),
                    upper_bound_mw=round(limit, 6),
                    reason=f"{worst.element} at {worst.value:.1f} {'%' if kind == 'loading' else 'p.u.'} with the full bid",
                    **common,
                )
            )
            cum = cum + per_vec * limit
        injections[direction] = fast.injections(cum)
    return Validated(results, injections)
