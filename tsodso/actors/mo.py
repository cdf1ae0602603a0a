"""The independent market operator of the integrated flexibility market (CS review Table I, scheme 6),
as an agent: it feeds bids and needs to its core (``actors.mo_core``), half a minute before each ISP
has every DSO with DERs in the list validate it (requests over the bus), clears, and publishes the
offer acceptances, the market results to the buyers and the block activations for commercial
buyers.
"""

import asyncio
import uuid
from datetime import datetime

from tsodso.actors import market, rules
from tsodso.actors.base import Actor
from tsodso.actors.market import Need, Offer
from tsodso.actors.mo_core import MoCore
from tsodso.gateway import Received, RequestTimeout
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import EnergyBid, FlexibilityNeed, MarketResult, MolEntry


class MarketOperator(Actor):
    STATE = ("bids", "needs", "cleared", "clearing_ms")

    def __init__(self, gateway, clock, scenario):
        super().__init__(gateway, clock, scenario)
        self.core = MoCore(scenario, gateway.me.id)
        gateway.on(EnergyBid, self.on_bid)
        gateway.on(FlexibilityNeed, self.on_need)

    async def on_bid(self, msg: Received[EnergyBid]) -> None:
        if refusal := self.core.take_bid(msg.body, msg.sender, self.clock.now()):
            self.gw.refuse(msg, refusal)

    async def on_need(self, msg: Received[FlexibilityNeed]) -> None:
        if refusal := self.core.take_need(msg.body, msg.sender):
            self.gw.refuse(msg, refusal)

    async def validate(self, dso: str, isp: datetime, conversation: uuid.UUID, entries: dict[str, MolEntry]) -> list:
        """One DSO's bounds (applied to ``entries``) and its congestion needs."""
        mol = self.core.mol_for(dso, isp, entries)
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
            self.core.validation_missed(mol, entries)
            return []
        return self.core.take_validation(answer.body, entries)

    def clearing(self, needs: list[Need], offers: list[Offer]) -> list[market.Award]:
        """The market's rule (``MoCore.clearing``); a device emulator's fault may replace it."""
        return self.core.clearing(needs, offers)

    async def clear(self, isp: datetime) -> None:
        conversation = uuid.uuid4()
        entries, dsos = self.core.open(isp)
        dso_needs: list = []
        for found in await asyncio.gather(*(self.validate(d, isp, conversation, entries) for d in dsos)):
            dso_needs += found
        cleared = self.core.clear(isp, entries, dso_needs, conversation, clearing=self.clearing)
        await self.send_results(cleared.result, cleared.buyers, conversation)
        await self.send(cleared.acceptances_and_activations)

    async def send_results(self, result: MarketResult, buyers: list[tuple[str, str]], conversation: uuid.UUID) -> None:
        await self.send(self.core.results_for(result, buyers, conversation))

    async def run(self) -> None:
        for gate in self.core.gates(self.resumed_at):
            await self.clock.sleep_until(gate)
            await self.clear(gate + rules.MARKET_GATE)
        await self.clock.sleep_until(self.scenario.end)

    def results(self) -> dict:
        return self.core.results()
