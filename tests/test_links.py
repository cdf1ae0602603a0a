"""Link conditions on the real broker path: delay, loss, outages, and how requests cope."""

import asyncio
import sqlite3
import time
from datetime import UTC, datetime

from tests.test_gateway import parties, sample, wait_until
from tsodso.gateway import ExchangeLog, Gateway, LinkConditions, LinkImpairment
from tsodso.schemas.messages import Heartbeat, MeritOrderList
from tsodso.testbed.stats import summary


async def test_a_known_delay_appears_in_the_measured_latency(broker, uid, tmp_path):
    p = parties(uid)
    links = LinkConditions({f"tso/*->dso/{p['dso'].id}": LinkImpairment(delay_s=0.05)})
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with (
            Gateway(p["tso"], broker.url, log=log, links=links) as tso,
            Gateway(p["dso"], broker.url, log=log) as dso,
        ):
            beats = {"tso": 0, "dso": 0}
            tso.on(Heartbeat, lambda m: asyncio.sleep(0, beats.__setitem__("tso", beats["tso"] + 1)))
            dso.on(Heartbeat, lambda m: asyncio.sleep(0, beats.__setitem__("dso", beats["dso"] + 1)))
            for _ in range(30):
                await tso.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["dso"])
                await dso.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["tso"])
                await asyncio.sleep(0.01)
            await wait_until(lambda: beats["tso"] >= 30 and beats["dso"] >= 30)
    db = sqlite3.connect(log.path)

    def latencies(sender):
        return [
            r[0] / 1000
            for r in db.execute(
                "SELECT received_us - created_us FROM exchange WHERE direction='in' AND type='heartbeat' AND sender=?",
                (str(sender),),
            )
        ]

    slow, fast = summary(latencies(p["tso"])), summary(latencies(p["dso"]))
    assert slow["count"] == fast["count"] == 30
    assert slow["p50"] >= 50.0  # the 50 ms, plus what the path costs anyway
    assert slow["p50"] - fast["p50"] >= 25.0  # the other direction is untouched (both pay the same path)


async def test_a_drop_probability_loses_about_that_share(broker, uid, tmp_path):
    p = parties(uid)
    links = LinkConditions({"tso/*->dso/*": LinkImpairment(drop_probability=0.3)}, seed=7)
    got = []
    async with Gateway(p["tso"], broker.url, links=links) as tso, Gateway(p["dso"], broker.url) as dso:
        dso.on(Heartbeat, lambda m: asyncio.sleep(0, got.append(m)))
        for _ in range(400):
            await tso.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["dso"])
        await asyncio.sleep(0.5)
    delivered = len(got)
    assert tso.stats["dropped"] + tso.stats["sent"] >= 400
    assert 0.6 * 400 <= delivered <= 0.8 * 400
    assert delivered == 400 - tso.stats["dropped"]


async def test_an_outage_window_stops_delivery_exactly_then(broker, uid, tmp_path):
    p = parties(uid)
    start = time.time() + 0.3
    links = LinkConditions({"tso/*->dso/*": LinkImpairment(outages=((start, start + 0.4),))})
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with (
            Gateway(p["tso"], broker.url, links=links, log=log) as tso,
            Gateway(p["dso"], broker.url, log=log) as dso,
        ):
            heard = set()

            @dso.on(Heartbeat)
            async def hear(msg) -> None:
                heard.add(msg.envelope.message_id)

            while time.time() < start + 0.8:
                last = await tso.publish(Heartbeat(sent_at=datetime.now(UTC), interval_s=1), p["dso"])
                await asyncio.sleep(0.01)
            deadline = time.time() + 5  # the last one (after the outage) arrives; a loaded machine may be slow
            while last.message_id not in heard and time.time() < deadline:
                await asyncio.sleep(0.01)
    db = sqlite3.connect(log.path)
    sent = db.execute(
        "SELECT created_us, message_id, outcome FROM exchange WHERE direction='out' AND type='heartbeat' AND sender=?",
        (str(p["tso"]),),
    ).fetchall()
    got = {r[0] for r in db.execute("SELECT message_id FROM exchange WHERE direction='in' AND type='heartbeat'")}
    inside = [r for r in sent if start * 1e6 <= r[0] < (start + 0.4) * 1e6]
    outside = [r for r in sent if not start * 1e6 <= r[0] < (start + 0.4) * 1e6]
    assert inside and all(r[1] not in got and r[2] == "dropped" for r in inside)
    assert outside and all(r[1] in got for r in outside)


async def test_a_lost_mol_validation_is_asked_for_again(broker, uid, tmp_path):
    p = parties(uid)
    down = time.time()
    # the DSO's first answers fall into an outage of the DSO -> TSO link
    links = LinkConditions({"dso/*->tso/*": LinkImpairment(outages=((down, down + 0.4),))})
    with ExchangeLog(tmp_path / "x.sqlite", run_id=uid) as log:
        async with Gateway(p["tso"], broker.url, log=log) as tso, Gateway(p["dso"], broker.url, log=log) as dso:
            dso.links = links

            @dso.on(MeritOrderList)
            async def validate(msg):
                await dso.reply(msg, sample("mol_validation"))

            answer = await tso.request(sample("merit_order_list"), p["dso"], timeout=0.3, retries=3)
            assert answer.body.mol_id == "mol1"
    db = sqlite3.connect(log.path)
    asked = db.execute("SELECT COUNT(*) FROM exchange WHERE direction='out' AND type='merit_order_list'").fetchone()[0]
    lost = db.execute(
        "SELECT COUNT(*) FROM exchange WHERE direction='out' AND type='mol_validation' AND outcome='dropped'"
    ).fetchone()[0]
    assert lost >= 1 and asked == lost + 1
