"""The independent market operator of the integrated flexibility market (CS review Table I, scheme 6).

It collects the BSPs' bids and the needs of the TSO, the DSOs and commercial parties; half a minute
before each ISP it has every DSO with DERs in the list validate it (the DSO answers with its bounds
and its congestion needs), clears all needs by willingness to pay (actors.market.clear_by_willingness)
and tells every party: offer acceptances to the BSPs, market results to the buyers, and block
activations to the sellers for commercial buyers (the TSO activates its share by aFRR setpoints,
the DSOs theirs by block activations).
"""

import asyncio
import time
import uuid
from collections import defaultdict
from datetime import datetime

from actors import market, rules, schemes
from actors.base import Actor
from actors.market import Need, Offer, clear_by_willingness
from gateway import Received, RequestTimeout
from schemas.codes import BidStatus, ProcessType
from schemas.envelope import Party
from schemas.messages import (
    AcceptedOffer,
    Award,
    EnergyBid,
    FlexActivation,
    FlexibilityNeed,
    MarketResult,
    MeritOrderList,
    MolEntry,
    OfferAcceptance,
)


class MarketOperator(Actor):
    STATE = ("bids", "needs", "cleared", "clearing_ms")

    def __init__(self, gateway, clock, scenario):
        super().__init__(gateway, clock, scenario)
        self.bids: dict[datetime, dict[str, EnergyBid]] = defaultdict(dict)
        self.needs: dict[datetime, dict[str, tuple[str, FlexibilityNeed]]] = defaultdict(
            dict
        )  # ISP -> id -> (role, need)
        self.cleared: list[MarketResult] = []
        self.clearing_ms: list[float] = []
        gateway.on(EnergyBid, self.on_bid)
        gateway.on(FlexibilityNeed, self.on_need)

    async def on_bid(self, msg: Received[EnergyBid]) -> None:
        if msg.body.bsp_id != msg.sender.id:
            await self.gw.refuse(msg, f"a bid of {msg.body.bsp_id} from {msg.sender}: a BSP bids for itself")
            return
        now = self.clock.now()
        if not rules.bid_in_time(msg.body.isp_start, now, rules.MARKET_GATE):
            await self.gw.refuse(msg, rules.late_bid_reason(msg.body.isp_start, now, rules.MARKET_GATE))
            return
        self.bids[msg.body.isp_start][msg.body.bid_id] = msg.body

    async def on_need(self, msg: Received[FlexibilityNeed]) -> None:
        if msg.body.buyer_id != msg.sender.id:
            self.log.warning("need refused: a party may only state its own needs", need=msg.body.need_id)
            return
        self.needs[msg.body.isp_start][msg.body.need_id] = (msg.sender.role, msg.body)

    async def validate(self, dso: str, isp: datetime, conversation: uuid.UUID, entries: dict[str, MolEntry]) -> list:
        """One DSO's bounds (applied to ``entries``) and its congestion needs."""
        mine = [e for e in entries.values() if dso in schemes.dn_dsos(e)]
        mol = MeritOrderList(mol_id=f"mo-{isp:%Y%m%d%H%M}", process=ProcessType.AFRR, isp_start=isp, bids=mine)
        try:
            answer = await self.gw.request(
                mol,
                Party(role="dso", id=dso),
                timeout=self.scenario.tso.mol_timeout_s,
                retries=self.scenario.tso.mol_retries,
                correlation_id=conversation,
            )
        except RequestTimeout:
            self.log.warning("DSO did not validate: its DER bids are left out", dso=dso)
            for e in mine:
                entries.pop(e.bid_id, None)
            return []
        for r in answer.body.results:
            if r.bid_id in entries:
                bound = 0.0 if r.status == BidStatus.REJECTED else r.upper_bound_mw
                entries[r.bid_id] = entries[r.bid_id].model_copy(
                    update={"upper_bound_mw": min(bound, entries[r.bid_id].upper_bound_mw)}
                )
        return [("dso", n) for n in answer.body.needs]

    async def clear(self, isp: datetime) -> None:
        conversation = uuid.uuid4()
        bids = self.bids.get(isp, {})
        entries = schemes.ranked(list(bids.values()))
        dsos = sorted({d for e in entries.values() for d in schemes.dn_dsos(e)})
        needs = list(self.needs.get(isp, {}).values())
        for found in await asyncio.gather(*(self.validate(d, isp, conversation, entries) for d in dsos)):
            needs += found
        t0 = time.perf_counter()
        awards = self.clearing([schemes.market_need(n, role) for role, n in needs], schemes.offers(entries))
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
                    buyer_role=role,  # type: ignore[arg-type]  # a buyer is 'role/id' of a tso, dso or bsp (actors.market)
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
        buyers = {("tso", self.scenario.tso.id)} | {(role, n.buyer_id) for role, n in needs}
        await self.send_results(result, sorted(buyers), conversation)
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
            await self.gw.publish(
                OfferAcceptance(isp_start=isp, accepted=accepted, rejected_bid_ids=rejected),
                Party(role="bsp", id=bsp),
                correlation_id=conversation,
            )
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
                await self.gw.publish(body, Party(role="bsp", id=a.bsp_id), correlation_id=conversation)
                await self.gw.publish(body, Party(role="tso", id=self.scenario.tso.id), correlation_id=conversation)
                for dso in sorted(schemes.dn_dsos(a)):
                    await self.gw.publish(body, Party(role="dso", id=dso), correlation_id=conversation)

    def clearing(self, needs: list[Need], offers: list[Offer]) -> list[market.Award]:
        """The integrated market's rule: the highest willingness to pay is served first."""
        return clear_by_willingness(needs, offers)

    async def send_results(self, result: MarketResult, buyers: list[tuple[str, str]], conversation: uuid.UUID) -> None:
        """Each buyer (the TSO, every party that stated a need) gets its own awards, none if it got none."""
        for role, buyer in buyers:
            mine = [a for a in result.awards if (a.buyer_role, a.buyer_id) == (role, buyer)]
            await self.gw.publish(
                result.model_copy(update={"awards": mine}), Party.of(role, buyer), correlation_id=conversation
            )

    async def run(self) -> None:
        gates = sorted(
            isp - rules.MARKET_GATE for isp in self.scenario.isps() if isp - rules.MARKET_GATE >= self.scenario.start
        )
        for gate in gates:
            if self.resumed_at is not None and gate < self.resumed_at:
                continue  # cleared before a restart, or missed while away
            await self.clock.sleep_until(gate)
            await self.clear(gate + rules.MARKET_GATE)
        await self.clock.sleep_until(self.scenario.end)

    def results(self) -> dict:
        return {
            "market_results": [r.model_dump(mode="json") for r in self.cleared],
            "clearing_ms": self.clearing_ms,
        }
