"""The independent market operator's decisions, apart from any I/O (CS review Table I, scheme 6): its
state and the functions that take bids and needs, apply the DSOs' validations and clear an ISP by
willingness to pay, returning the messages to send (``actors.outbox.Send``). The agent
(``actors.mo.MarketOperator``) asks the DSOs over the bus and publishes.
"""

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tsodso.actors import market, rules, schemes
from tsodso.actors.config import Scenario
from tsodso.actors.market import Need, Offer, clear_by_willingness
from tsodso.actors.outbox import Send
from tsodso.schemas.codes import BidStatus, ProcessType
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    AcceptedOffer,
    Award,
    EnergyBid,
    FlexActivation,
    FlexibilityNeed,
    MarketResult,
    MeritOrderList,
    MolEntry,
    MolValidation,
    OfferAcceptance,
)

Clearing = Callable[[list[Need], list[Offer]], list[market.Award]]


@dataclass
class Cleared:
    """One ISP cleared: the result, who gets a copy of it (their own awards), and the rest to send."""

    result: MarketResult
    buyers: list[tuple[str, str]]
    acceptances_and_activations: list[Send]


class MoCore:
    """The market operator's state and decisions (see the module's docstring)."""

    def __init__(self, scenario: Scenario, me: str):
        self.scenario = scenario
        self.me = me
        self.bids: dict[datetime, dict[str, EnergyBid]] = defaultdict(dict)
        self.needs: dict[datetime, dict[str, tuple[str, FlexibilityNeed]]] = defaultdict(
            dict
        )  # ISP -> id -> (role, need)
        self.cleared: list[MarketResult] = []
        self.clearing_ms: list[float] = []

    def take_bid(self, bid: EnergyBid, sender: Party, now: datetime) -> str | None:
        """Keep the bid for its ISP's market, or say why not (a BSP bids for itself, before the gate)."""
        if bid.bsp_id != sender.id:
            return f"a bid of {bid.bsp_id} from {sender}: a BSP bids for itself"
        if not rules.bid_in_time(bid.isp_start, now, rules.MARKET_GATE):
            return rules.late_bid_reason(bid.isp_start, now, rules.MARKET_GATE)
        self.bids[bid.isp_start][bid.bid_id] = bid
        return None

    def take_need(self, need: FlexibilityNeed, sender: Party) -> str | None:
        if need.buyer_id != sender.id:
            return f"need {need.need_id} of {need.buyer_id} from {sender}: a party states its own needs"
        self.needs[need.isp_start][need.need_id] = (sender.role, need)
        return None

    def open(self, isp: datetime) -> tuple[dict[str, MolEntry], list[str]]:
        """The ISP's bids as a list, and the DSOs whose grids hold one of them (they validate it)."""
        entries = schemes.ranked(list(self.bids.get(isp, {}).values()))
        return entries, sorted({d for e in entries.values() for d in schemes.dn_dsos(e)})

    @staticmethod
    def mol_for(dso: str, isp: datetime, entries: dict[str, MolEntry]) -> MeritOrderList:
        mine = [e for e in entries.values() if dso in schemes.dn_dsos(e)]
        return MeritOrderList(mol_id=f"mo-{isp:%Y%m%d%H%M}", process=ProcessType.AFRR, isp_start=isp, bids=mine)

    @staticmethod
    def take_validation(answer: MolValidation, entries: dict[str, MolEntry]) -> list[tuple[str, FlexibilityNeed]]:
        """A DSO's bounds applied to the list (in place); its congestion needs."""
        for r in answer.results:
            if r.bid_id in entries:
                bound = 0.0 if r.status == BidStatus.REJECTED else r.upper_bound_mw
                entries[r.bid_id] = entries[r.bid_id].model_copy(
                    update={"upper_bound_mw": min(bound, entries[r.bid_id].upper_bound_mw)}
                )
        return [("dso", n) for n in answer.needs]

    @staticmethod
    def validation_missed(mol: MeritOrderList, entries: dict[str, MolEntry]) -> None:
        """A DSO that did not validate: its DER bids are left out."""
        for e in mol.bids:
            entries.pop(e.bid_id, None)

    @staticmethod
    def clearing(needs: list[Need], offers: list[Offer]) -> list[market.Award]:
        """The integrated market's rule: the highest willingness to pay is served first."""
        return clear_by_willingness(needs, offers)

    def clear(
        self,
        isp: datetime,
        entries: dict[str, MolEntry],
        dso_needs: list[tuple[str, FlexibilityNeed]],
        conversation: uuid.UUID,
        clearing: Clearing | None = None,
    ) -> Cleared:
        """Clear every need of the ISP against the validated list: the result for each buyer, offer
        acceptances to the BSPs, and block activations to the sellers for commercial buyers (the TSO
        activates its share by aFRR setpoints, the DSOs theirs by block activations)."""
        bids = self.bids.get(isp, {})
        needs = list(self.needs.get(isp, {}).values()) + dso_needs
        t0 = time.perf_counter()
        awards = (clearing or self.clearing)(
            [schemes.market_need(n, role) for role, n in needs], schemes.offers(entries)
        )
        elapsed = time.perf_counter() - t0
        self.clearing_ms.append(elapsed * 1000)
        messages = []
        for cleared in awards:
            role, buyer = cleared.buyer.split("/", 1)
            bid = bids[cleared.bid_id]
            messages.append(
                Award(
                    **entries[cleared.bid_id].model_dump(),
                    buyer_id=buyer,
                    buyer_role=role,  # type: ignore[arg-type]  # a buyer is 'role/id' of a tso, dso or bsp
                    need_id=cleared.need_id,
                    awarded_mw=cleared.mw,
                    ramp_rate_mw_per_min=bid.ramp_rate_mw_per_min,
                    reference_mw=bid.reference_mw,
                )
            )
        result = MarketResult(
            isp_start=isp, scheme=self.scenario.coordination, awards=messages, computation_time_s=elapsed
        )
        self.cleared.append(result)
        buyers = sorted({("tso", self.scenario.tso.id)} | {(role, n.buyer_id) for role, n in needs})
        out: list[Send] = []
        for bsp in sorted({b.bsp_id for b in bids.values()}):
            got: dict[str, float] = defaultdict(float)
            for a in messages:
                if a.bsp_id == bsp:
                    got[a.bid_id] += a.awarded_mw
            accepted = [
                AcceptedOffer(bid_id=b, direction=bids[b].direction, upper_bound_mw=round(mw, 4))
                for b, mw in got.items()
            ]
            rejected = sorted(b for b, x in bids.items() if x.bsp_id == bsp and b not in got)
            acceptance = OfferAcceptance(isp_start=isp, accepted=accepted, rejected_bid_ids=rejected)
            out.append(Send(acceptance, Party(role="bsp", id=bsp), conversation))
        for a in messages:
            if a.buyer_role == "bsp":  # a commercial party's award: the operator activates it for the buyer
                body = FlexActivation(
                    activation_id=f"mo-{isp:%Y%m%d%H%M}-{a.bid_id}"[:64],
                    buyer_id=a.buyer_id,
                    buyer_role="bsp",
                    purpose="commercial",
                    bid_id=a.bid_id,
                    bsp_id=a.bsp_id,
                    direction=a.direction,
                    isp_start=isp,
                    activated_mw=a.awarded_mw,
                    price_eur_per_mwh=a.price_eur_per_mwh,
                    assets=a.assets,
                )
                targets = [Party(role="bsp", id=a.bsp_id), Party(role="tso", id=self.scenario.tso.id)]
                targets += [Party(role="dso", id=d) for d in sorted(schemes.dn_dsos(a))]
                out += [Send(body, to, conversation) for to in targets]
        return Cleared(result, buyers, out)

    @staticmethod
    def results_for(result: MarketResult, buyers: list[tuple[str, str]], conversation: uuid.UUID) -> list[Send]:
        """Each buyer (the TSO, every party that stated a need) gets its own awards, none if it got none."""
        return [
            Send(
                result.model_copy(
                    update={"awards": [a for a in result.awards if (a.buyer_role, a.buyer_id) == (r, b)]}
                ),
                Party.of(r, b),
                conversation,
            )
            for r, b in buyers
        ]

    def gates(self, since: datetime | None) -> list[datetime]:
        """The instants the operator clears (``rules.MARKET_GATE`` before each ISP of the run), from
        ``since`` on after a restart."""
        start = self.scenario.start
        gates = sorted(isp - rules.MARKET_GATE for isp in self.scenario.isps() if isp - rules.MARKET_GATE >= start)
        return [g for g in gates if since is None or g >= since]

    def results(self) -> dict:
        return {"market_results": [r.model_dump(mode="json") for r in self.cleared], "clearing_ms": self.clearing_ms}
