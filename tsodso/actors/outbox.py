"""What a core hands its agent to publish: the one shape every operator's decisions take."""

import uuid
from dataclasses import dataclass

from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import Body


@dataclass(frozen=True)
class Send:
    """A message a core decided to send; the agent publishes it (``actors.base.Actor.send``)."""

    body: Body
    to: Party
    correlation_id: uuid.UUID | None = None
    causation_id: uuid.UUID | None = None
    valid_for_s: float | None = None  # [s, wall] None: the type's delivery policy
