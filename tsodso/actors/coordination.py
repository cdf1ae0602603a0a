"""The six TSO-DSO coordination schemes of CS review Table I, one registry entry each.

This is the only place a scheme is named. An actor asks the scenario's scheme what it implies
(``scenario.scheme.tso_asks_dsos``), never compares scheme names; adding a seventh scheme is one
entry here (and its tests). ``actors.schemes`` holds the arithmetic the schemes share (ranking,
offers, needs, imbalance profiles).

Per ISP the inputs are the same in every scheme: the BSPs' bids, the TSO's balancing need (the
system imbalance), each DSO's congestion needs (its AC power flow of the ISP) and, in the fragmented
scheme, each DSO's area imbalance. What differs is who sees which bids and who buys first.
"""

from dataclasses import dataclass
from typing import Literal

Clearing = Literal["merit_order", "joint_dispatch", "willingness_to_pay"]


@dataclass(frozen=True)
class CoordinationScheme:
    """What one scheme implies for the actors (CS review Table I)."""

    name: str
    label: str
    """Short name for tables and plots."""
    summary: str
    """One sentence: who buys DER flexibility and what the DSO does."""
    der_bids_to: Literal["tso", "dso", "mo"]
    """Where a BSP sends a bid whose DERs are in one DSO's grid (bids of TN assets only, or of DERs in
    several grids, go to the TSO unless a market operator takes every bid)."""
    dso_validates: bool
    """The DSO checks DN assets at prequalification and DER activations in real time."""
    tso_asks_dsos: bool
    """The TSO sends its merit order list to every DSO whose grid holds a bid, and applies their bounds."""
    clearing: Clearing
    """How the TSO's (or the market operator's) list is cleared: in merit order for the TSO's need, by a
    joint dispatch of all needs at least total cost, or by willingness to pay."""
    tso_reaches_der: bool
    """Whether the TSO may activate bids with DERs (the fragmented scheme keeps it to TN bids)."""
    tso_balances_areas: bool
    """Whether the TSO balances the whole system: the DSO areas' imbalance and what DSOs and markets
    activated outside aFRR are part of its need."""
    dso_local_market: bool
    """The DSO buys first for its congestion at the local gate (``actors.rules.LOCAL_GATE``)."""
    dso_balances_area: bool
    """The DSO also balances its own area in its local market (keeping the interface on schedule)."""
    dso_forwards_rest: bool
    """The DSO validates what it did not buy and forwards it to the TSO as bids."""
    dso_relieves_rest: bool
    """Told what the TSO expects to activate, the DSO relieves the congestion that remains with the
    capacity left (and the TSO takes what the DSO bought off its list)."""
    dso_states_needs: bool
    """The DSO returns its congestion needs with its validation, for a market to clear."""
    tso_publishes_result: bool
    """The TSO tells each DSO the outcome of its clearing (a ``market_result``)."""
    market_operator: bool
    """An independent market operator takes every bid and every need and clears them."""

    @property
    def tso_activates_from_market(self) -> bool:
        """The TSO activates what the market operator gave it instead of clearing a list itself."""
        return self.market_operator


SCHEMES: dict[str, CoordinationScheme] = {
    s.name: s
    for s in (
        CoordinationScheme(
            name="tso_managed",
            label="TSO-managed",
            summary="Centralised AS market: every bid goes to the TSO, no DSO validation and no real-time "
            "limits; the DSO is passive and its congestion stays.",
            der_bids_to="tso",
            dso_validates=False,
            tso_asks_dsos=False,
            clearing="merit_order",
            tso_reaches_der=True,
            tso_balances_areas=True,
            dso_local_market=False,
            dso_balances_area=False,
            dso_forwards_rest=False,
            dso_relieves_rest=False,
            dso_states_needs=False,
            tso_publishes_result=False,
            market_operator=False,
        ),
        CoordinationScheme(
            name="dso_managed",
            label="DSO-managed",
            summary="Local AS market: DER bids go to their DSO, which buys first for its congestion one minute "
            "before gate closure, then validates the rest on its grid and forwards it to the TSO.",
            der_bids_to="dso",
            dso_validates=True,
            tso_asks_dsos=False,
            clearing="merit_order",
            tso_reaches_der=True,
            tso_balances_areas=True,
            dso_local_market=True,
            dso_balances_area=False,
            dso_forwards_rest=True,
            dso_relieves_rest=False,
            dso_states_needs=False,
            tso_publishes_result=False,
            market_operator=False,
        ),
        CoordinationScheme(
            name="fragmented",
            label="fragmented",
            summary="Shared balancing responsibility: DER bids go to their DSO, which relieves its congestion "
            "and balances its own area; the TSO balances the transmission area with TN bids only.",
            der_bids_to="dso",
            dso_validates=True,
            tso_asks_dsos=False,
            clearing="merit_order",
            tso_reaches_der=False,
            tso_balances_areas=False,
            dso_local_market=True,
            dso_balances_area=True,
            dso_forwards_rest=False,
            dso_relieves_rest=False,
            dso_states_needs=False,
            tso_publishes_result=False,
            market_operator=False,
        ),
        CoordinationScheme(
            name="hybrid",
            label="hybrid",
            summary="Multi-level (CS review §IV.B, the reference scenario): every bid goes to the TSO, whose "
            "merit order list each DSO validates; the TSO tells each DSO what it expects to activate "
            "and the DSO relieves what congestion remains with the capacity left.",
            der_bids_to="tso",
            dso_validates=True,
            tso_asks_dsos=True,
            clearing="merit_order",
            tso_reaches_der=True,
            tso_balances_areas=True,
            dso_local_market=False,
            dso_balances_area=False,
            dso_forwards_rest=False,
            dso_relieves_rest=True,
            dso_states_needs=False,
            tso_publishes_result=True,
            market_operator=False,
        ),
        CoordinationScheme(
            name="common_market",
            label="common market",
            summary="Common TSO-DSO market: every bid goes to the TSO; each DSO validates the list and returns "
            "its congestion needs; the TSO clears all needs at once at least total activation cost.",
            der_bids_to="tso",
            dso_validates=True,
            tso_asks_dsos=True,
            clearing="joint_dispatch",
            tso_reaches_der=True,
            tso_balances_areas=True,
            dso_local_market=False,
            dso_balances_area=False,
            dso_forwards_rest=False,
            dso_relieves_rest=False,
            dso_states_needs=True,
            tso_publishes_result=True,
            market_operator=False,
        ),
        CoordinationScheme(
            name="integrated_market",
            label="integrated market",
            summary="Integrated flexibility market: every bid goes to an independent market operator, as do "
            "the TSO's, the DSOs' and commercial parties' needs; the DSOs validate its list; highest "
            "willingness to pay is served first.",
            der_bids_to="mo",
            dso_validates=True,
            tso_asks_dsos=False,
            clearing="willingness_to_pay",
            tso_reaches_der=True,
            tso_balances_areas=True,
            dso_local_market=False,
            dso_balances_area=False,
            dso_forwards_rest=False,
            dso_relieves_rest=False,
            dso_states_needs=True,
            tso_publishes_result=False,
            market_operator=True,
        ),
    )
}

DEFAULT = "hybrid"
"""The scheme the review proposes for the Netherlands (CS review Table I) and the reference scenario's."""

SWITCH = {True: "hybrid", False: "tso_managed", "on": "hybrid", "off": "tso_managed"}
"""The former on/off coordination switch: on is the hybrid scheme, off the TSO-managed one."""


def scheme(name: str) -> CoordinationScheme:
    """The registry entry of ``name``; ValueError naming the known schemes otherwise."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ValueError(f"unknown coordination scheme {name!r}; known: {', '.join(SCHEMES)}, on or off") from None
