"""Messages in flight between the gateways of one process, for whoever must know when the bus is quiet.

A virtual clock (``testbed.clock.VirtualClock``) advances scenario time only when no message is on
its way and every actor waits for time: it gives every gateway of the run the same ``Traffic``.
The gateway says when a message leaves (``expect``, with its recipient) and when its own handling of
an arrival is over (``handled``: checked, logged, and every handler it started has returned).
"""

from typing import Protocol

from tsodso.schemas.envelope import Party


class Traffic(Protocol):
    def expect(self, message_id: str, to: Party, sender: Party) -> None:
        """A message leaves for ``to`` (an actor, a role's ``all`` or everyone)."""

    def cancel(self, message_id: str) -> None:
        """The message did not leave after all (dropped before it could be sent)."""

    def handled(self, message_id: str) -> None:
        """One receiver is done with the message."""


def reaches(to: Party, party: Party) -> bool:
    """Whether a message addressed to ``to`` reaches ``party`` (``schemas.topics.inbox_filters``)."""
    return to.role == "all" or (to.role == party.role and to.id in ("all", party.id))
