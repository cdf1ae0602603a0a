"""The topic namespace.

    tsodso/v1/{sender_role}/{sender_id}/{type}/{recipient_role}/{recipient_id}

The topic says who sends what to whom, so a broker access list can be written per role and actor
(``broker.acl``): an actor may write only below its own ``{role}/{id}`` and read only topics that
end in its own ``{role}/{id}``, its role's ``{role}/all`` or ``all/all``. ``v1`` is the major version
of the contract; a breaking change gets a new prefix and both can share a broker.
"""

from functools import lru_cache
from typing import NamedTuple

from tsodso.schemas.envelope import Party

PREFIX = "tsodso/v1"
ALL = Party(role="all", id="all")


class TopicParts(NamedTuple):
    sender: Party
    type: str
    recipient: Party


def topic_for(sender: Party, type_name: str, recipient: Party) -> str:
    """The topic a message of ``type_name`` from ``sender`` to ``recipient`` is published on."""
    return f"{PREFIX}/{sender.role}/{sender.id}/{type_name}/{recipient.role}/{recipient.id}"


@lru_cache(maxsize=65536)
def parse_topic(topic: str) -> TopicParts:
    """Split a topic of the namespace; ValueError says what is wrong with it. (Cached: a run uses
    few distinct topics, and parsing builds two validated Party objects.)"""
    parts = topic.split("/")
    if len(parts) != 7 or "/".join(parts[:2]) != PREFIX:
        raise ValueError(f"topic {topic!r} is not {PREFIX}/<role>/<id>/<type>/<role>/<id>")
    _, _, s_role, s_id, type_name, r_role, r_id = parts
    return TopicParts(Party.of(s_role, s_id), type_name, Party.of(r_role, r_id))


def inbox_filters(me: Party) -> list[str]:
    """Subscription filters that reach ``me``: addressed to me, to my role, to everyone."""
    return [
        f"{PREFIX}/+/+/+/{me.role}/{me.id}",
        f"{PREFIX}/+/+/+/{me.role}/all",
        f"{PREFIX}/+/+/+/all/all",
    ]
