"""Who is online, decided by the start a presence state belongs to, not by arrival order alone
(gateway.presence). The orders here are the ones brokers produce: a cluster delivering a previous
run's stored 'offline' after the new 'online', a will arriving after the 'online' it ends."""

import asyncio
import time
from datetime import UTC, datetime, timedelta

from tsodso.gateway import Gateway
from tsodso.gateway.memory import bus
from tsodso.gateway.presence import Presence
from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import ActorState
from tsodso.schemas.topics import ALL, topic_for
from tsodso.testbed.standalone import track_presence, wait_until_online

RUN1 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
RUN2 = RUN1 + timedelta(minutes=5)


def state(status: str, started_at: datetime | None, at: datetime) -> ActorState:
    return ActorState(status=status, since=at, started_at=started_at)  # type: ignore[arg-type]


def test_a_previous_runs_offline_delivered_late_does_not_hide_the_new_online():
    presence = Presence()
    assert presence.update("bsp/bsp1", state("online", RUN2, RUN2), retained=False)
    # the previous run's retained 'offline', delivered 2 ms later by another cluster node
    assert not presence.update("bsp/bsp1", state("offline", RUN1, RUN1 + timedelta(minutes=1)), retained=True)
    assert presence.online == {"bsp/bsp1"}


def test_the_same_stale_offline_stays_stale_when_it_arrives_live():
    presence = Presence()
    presence.update("dso/dso1", state("online", RUN2, RUN2), retained=True)
    assert not presence.update("dso/dso1", state("offline", RUN1, RUN1), retained=False)
    assert presence.is_online("dso/dso1")


def test_the_will_ends_its_online_though_it_was_built_before_it():
    presence = Presence()
    presence.update("bsp/bsp1", state("online", RUN1, RUN1 + timedelta(seconds=1)), retained=False)
    will = state("offline", RUN1, RUN1)  # built at connect, before the 'online'
    assert presence.update("bsp/bsp1", will, retained=False)
    assert presence.online == set()


def test_a_new_start_supersedes_the_old_in_either_order():
    presence = Presence()
    presence.update("mo/mo1", state("offline", RUN1, RUN1), retained=True)
    presence.update("mo/mo1", state("online", RUN2, RUN2), retained=False)
    assert presence.online == {"mo/mo1"}
    later = Presence()
    later.update("mo/mo1", state("online", RUN2, RUN2), retained=True)
    later.update("mo/mo1", state("offline", RUN1, RUN1), retained=True)
    assert later.online == {"mo/mo1"}


def test_reconnecting_within_one_start_counts_in_arrival_order():
    presence = Presence()
    presence.update("bsp/bsp1", state("online", RUN1, RUN1), retained=False)
    presence.update("bsp/bsp1", state("offline", RUN1, RUN1), retained=False)  # will: the connection was lost
    assert not presence.is_online("bsp/bsp1")
    presence.update("bsp/bsp1", state("online", RUN1, RUN1 + timedelta(seconds=9)), retained=False)  # back
    assert presence.is_online("bsp/bsp1")


def test_a_device_that_gives_no_start_is_judged_by_live_over_stored():
    presence = Presence()
    presence.update("bsp/vendor", state("online", None, RUN2), retained=False)
    assert not presence.update("bsp/vendor", state("offline", None, RUN1), retained=True)
    assert presence.is_online("bsp/vendor")
    assert presence.update("bsp/vendor", state("offline", None, RUN2), retained=False)  # its will
    assert not presence.is_online("bsp/vendor")


async def test_a_state_the_broker_kept_from_a_subscriber_is_found_by_reading_the_retained_again(uid):
    """A clustered broker (NATS 2.9, 3 nodes) can keep from a subscriber a retained 'online' published on
    another node a moment before it subscribed. The TSO's wait for its peers reads the retained states
    again, so the run starts. Here the in-memory bus stands for that broker: it holds the state without
    having delivered it."""
    bsp, tso = Party.of("bsp", f"bsp-{uid}"), Party.of("tso", f"tso-{uid}")
    name = f"kept-{uid}"
    async with Gateway(bsp, f"memory://{name}"):
        topic = topic_for(bsp, "actor_state", ALL)
        kept = bus(name).retained.pop(topic)  # stored, but not yet where the TSO subscribes
        async with Gateway(tso, f"memory://{name}") as gw:
            presence = track_presence(gw)
            await asyncio.sleep(0.05)
            assert presence.online == {str(tso)}  # itself only
            bus(name).retained[topic] = kept  # the broker's copy arrives after the TSO's subscription
            never = await wait_until_online(gw, presence, {str(bsp)}, time.time() + 0.3, reread_s=float("inf"))
            assert never == {str(bsp)}  # waiting alone never sees it
            assert await wait_until_online(gw, presence, {str(bsp)}, time.time() + 5, reread_s=0.1) == set()
            assert presence.is_online(str(bsp))
