"""Who is online, decided by the start a presence state belongs to, not by arrival order alone
(gateway.presence). The orders here are the ones brokers produce: a cluster delivering a previous
run's stored 'offline' after the new 'online', a will arriving after the 'online' it ends."""

from datetime import UTC, datetime, timedelta

from tsodso.gateway.presence import Presence
from tsodso.schemas.messages import ActorState

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
