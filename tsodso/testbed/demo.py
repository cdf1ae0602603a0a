"""A small TSO-DSO-BSP exchange over a real broker, printed from the exchange log.

This is the spine's demonstration: prequalification (Fig. 3), a bid, a merit order list sent for
validation and answered, the acceptance, and a few aFRR delta setpoints answered by telemetry
(Fig. 4). The actors' decisions here are deliberately trivial (the DSO accepts every bid whose bus
it knows); the grid-aware actors and the §IV.B reference scenario are built on top of this path.
"""

import asyncio
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from tsodso.gateway import ExchangeLog, Gateway, Received
from tsodso.schemas.codes import BidStatus, Connection, Direction, ProcessType
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import (
    AcceptedOffer,
    AssetData,
    AssetVerdict,
    BidAsset,
    BidValidation,
    DeltaSetpoint,
    EnergyBid,
    Measurement,
    MeritOrderList,
    MolEntry,
    MolValidation,
    OfferAcceptance,
    PrequalificationForward,
    PrequalificationRequest,
    PrequalificationResult,
    Telemetry,
)
from tsodso.testbed.stats import summary

TSO, DSO, BSP = Party(role="tso", id="tso"), Party(role="dso", id="dso1"), Party(role="bsp", id="bsp1")
DSO_BUSES = {"bus7", "bus8"}
ISP = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


async def exchange(broker_url: str, log: ExchangeLog, *, cycles: int = 5, period_s: float = 0.2) -> None:
    async with (
        Gateway(TSO, broker_url, log=log) as tso,
        Gateway(DSO, broker_url, log=log) as dso,
        Gateway(BSP, broker_url, log=log) as bsp,
    ):
        telemetry_seen: asyncio.Queue[Received[Telemetry]] = asyncio.Queue()

        @tso.on(PrequalificationRequest)
        async def prequalify(msg: Received[PrequalificationRequest]) -> None:
            dn = [a for a in msg.body.assets if a.connection == Connection.DN]
            verdicts = [
                AssetVerdict(
                    asset_id=a.asset_id,
                    qualified=True,
                    validated_capacity_up_mw=a.capacity_up_mw,
                    validated_capacity_down_mw=a.capacity_down_mw,
                    checked_by="tso",
                )
                for a in msg.body.assets
                if a.connection == Connection.TN
            ]
            if dn:
                answer = await tso.request(
                    PrequalificationForward(bsp_id=msg.body.bsp_id, dso_id=DSO.id, assets=dn),
                    DSO,
                    timeout=5,
                    correlation_id=msg.envelope.correlation_id,
                )
                verdicts += answer.body.verdicts
            await tso.reply(msg, PrequalificationResult(bsp_id=msg.body.bsp_id, verdicts=verdicts))

        @dso.on(PrequalificationForward)
        async def check_assets(msg: Received[PrequalificationForward]) -> None:
            verdicts = []
            for a in msg.body.assets:
                ok = a.connection_bus in DSO_BUSES
                verdicts.append(
                    AssetVerdict(
                        asset_id=a.asset_id,
                        qualified=ok,
                        checked_by="dso",
                        validated_capacity_up_mw=a.capacity_up_mw if ok else 0,
                        validated_capacity_down_mw=a.capacity_down_mw if ok else 0,
                        reason=None if ok else f"bus {a.connection_bus!r} is not in the DSO's grid",
                    )
                )
            await dso.reply(msg, PrequalificationResult(bsp_id=msg.body.bsp_id, verdicts=verdicts))

        @dso.on(MeritOrderList)
        async def validate(msg: Received[MeritOrderList]) -> None:
            results = [
                BidValidation(bid_id=b.bid_id, status=BidStatus.ACCEPTED, upper_bound_mw=b.upper_bound_mw)
                for b in msg.body.bids
            ]
            await dso.reply(
                msg, MolValidation(mol_id=msg.body.mol_id, iteration=msg.body.iteration, dso_id=DSO.id, results=results)
            )

        @bsp.on(DeltaSetpoint)
        async def follow(msg: Received[DeltaSetpoint]) -> None:
            sp = msg.body
            await bsp.publish(
                Telemetry(
                    source_id=BSP.id,
                    instant=sp.instant,
                    cycle=sp.cycle,
                    delivered_delta_mw=sp.delta_mw,
                    measurements=[Measurement(resource_id="plant", p_mw=sp.reference_mw + sp.delta_mw)],
                ),
                TSO,
                causation_id=msg.envelope.message_id,
                correlation_id=msg.envelope.correlation_id,
            )

        @tso.on(Telemetry)
        async def watch(msg: Received[Telemetry]) -> None:
            await telemetry_seen.put(msg)

        plant = AssetData(
            asset_id="plant",
            connection=Connection.TN,
            product=ProcessType.AFRR,
            capacity_up_mw=10,
            capacity_down_mw=10,
            ramp_rate_mw_per_min=2,
        )
        der = AssetData(
            asset_id="der-park",
            connection=Connection.DN,
            dso_id=DSO.id,
            connection_bus="bus7",
            product=ProcessType.AFRR,
            capacity_up_mw=10,
            capacity_down_mw=10,
            ramp_rate_mw_per_min=2,
        )
        result = await bsp.request(PrequalificationRequest(bsp_id=BSP.id, assets=[plant, der]), TSO, timeout=5)
        assert all(v.qualified for v in result.body.verdicts), result.body

        bid = EnergyBid(
            bid_id="bid-up-1",
            bsp_id=BSP.id,
            process=ProcessType.AFRR,
            direction=Direction.UP,
            isp_start=ISP,
            quantity_mw=20,
            price_eur_per_mwh=85,
            reference_mw=200,
            ramp_rate_mw_per_min=2,
            assets=[
                BidAsset(asset_id="plant", connection=Connection.TN, share_mw=10),
                BidAsset(
                    asset_id="der-park", connection=Connection.DN, dso_id=DSO.id, connection_bus="bus7", share_mw=10
                ),
            ],
        )
        await bsp.publish(bid, TSO)
        mol = MeritOrderList(
            mol_id="mol-1000",
            process=ProcessType.AFRR,
            isp_start=ISP,
            bids=[
                MolEntry(
                    rank=1,
                    bid_id=bid.bid_id,
                    bsp_id=BSP.id,
                    direction=bid.direction,
                    price_eur_per_mwh=bid.price_eur_per_mwh,
                    quantity_mw=bid.quantity_mw,
                    upper_bound_mw=bid.quantity_mw,
                    assets=bid.assets,
                )
            ],
        )
        validation = await tso.request(mol, DSO, timeout=5)
        bounds = {r.bid_id: r for r in validation.body.results}
        await tso.publish(
            OfferAcceptance(
                isp_start=ISP,
                accepted=[
                    AcceptedOffer(bid_id=b, direction=Direction.UP, upper_bound_mw=r.upper_bound_mw)
                    for b, r in bounds.items()
                ],
            ),
            BSP,
            correlation_id=validation.envelope.correlation_id,
        )
        start = time.monotonic()
        for cycle in range(cycles):
            await asyncio.sleep(max(0.0, start + cycle * period_s - time.monotonic()))
            await tso.publish(
                DeltaSetpoint(
                    bsp_id=BSP.id,
                    cycle=cycle,
                    instant=ISP + timedelta(seconds=4 * cycle),
                    reference_mw=200,
                    delta_mw=float(cycle),
                ),
                BSP,
                valid_for_s=4,
            )
        for _ in range(cycles):
            await asyncio.wait_for(telemetry_seen.get(), 5)


def print_exchange(db_path: Path, console: Console) -> dict[str, Any]:
    """Print every delivered message with its one-way latency, and per-type percentiles."""
    db = sqlite3.connect(db_path)
    rows = db.execute(
        "SELECT received_us, sender, receiver, type, bytes, qos, received_us - created_us, reason FROM exchange "
        "WHERE direction='in' AND outcome='delivered' AND type NOT IN ('actor_state') ORDER BY received_us"
    ).fetchall()
    if not rows:
        console.print("[red]nothing crossed the bus[/red]")
        return {}
    t0 = rows[0][0]
    table = Table(title="What crossed the bus (from the exchange log)")
    for col in ("t [ms]", "from", "to", "type", "bytes", "QoS", "latency [ms]"):
        table.add_column(col, justify="right" if col in ("t [ms]", "bytes", "QoS", "latency [ms]") else "left")
    per_type: dict[str, list[float]] = {}
    for received, sender, receiver, type_name, size, qos, lat_us, _ in rows:
        table.add_row(
            f"{(received - t0) / 1000:.1f}", sender, receiver, type_name, str(size), str(qos), f"{lat_us / 1000:.2f}"
        )
        per_type.setdefault(type_name, []).append(lat_us / 1000)
    console.print(table)
    stats = Table(title="One-way latency per message type [ms]")
    for col in ("type", "count", "p50", "p99", "max"):
        stats.add_column(col, justify="left" if col == "type" else "right")
    out = {}
    for type_name, values in sorted(per_type.items()):
        s = summary(values)
        out[type_name] = s
        stats.add_row(type_name, str(s["count"]), f"{s['p50']:.2f}", f"{s['p99']:.2f}", f"{s['max']:.2f}")
    console.print(stats)
    rejected = db.execute("SELECT COUNT(*) FROM exchange WHERE outcome='rejected'").fetchone()[0]
    console.print(f"rejected messages: {rejected}; log: {db_path}")
    return out
