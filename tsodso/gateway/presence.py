"""Who is on the bus: each actor's current state from the ``actor_state`` messages it publishes
(retained, so a newcomer learns them at once; 'offline' also as the actor's MQTT will).

Arrival order alone misleads. A broker cluster may deliver a previous run's stored 'offline' after
the live 'online' of the actor's new start (seen on a 3-node NATS cluster: the TSO then waited for
an actor that was there). The envelope's ``created_at`` alone misleads too: the will is built when
the actor connects, before its 'online', yet it ends that 'online'. So a state is judged by the start
it belongs to (``ActorState.started_at``, the same instant on every state of one process):

- a state of an earlier start than the one known is stale;
- within one start, states count in the order they arrive, except that a stored (retained) copy
  never overrides what was already heard live: it is a snapshot taken before.

A sender that gives no ``started_at`` is judged by the second rule alone.
"""

from dataclasses import dataclass
from datetime import datetime

from tsodso.schemas.messages import ActorState


@dataclass(frozen=True, slots=True)
class _Known:
    started_at: datetime | None
    online: bool
    live: bool  # heard live at least once in this start (not only as a stored copy)


class Presence:
    """Actors' current states, by sender ('role/id'). Feed it every ``actor_state`` that passed the
    gateway's checks, with its retain flag."""

    def __init__(self) -> None:
        self._known: dict[str, _Known] = {}

    def update(self, sender: str, state: ActorState, *, retained: bool) -> bool:
        """Take one state; True if it is now the sender's current state, False if it is stale."""
        known = self._known.get(sender)
        start = state.started_at
        same_start = True
        if known is not None:
            if start is not None and known.started_at is not None:
                if start < known.started_at:
                    return False
                same_start = start == known.started_at
            if same_start and retained and known.live:
                return False
        live = not retained or (known is not None and same_start and known.live)
        self._known[sender] = _Known(start, state.status == "online", live)
        return True

    def is_online(self, sender: str) -> bool:
        known = self._known.get(sender)
        return known is not None and known.online

    @property
    def online(self) -> set[str]:
        """The senders whose current state is 'online'."""
        return {sender for sender, known in self._known.items() if known.online}
