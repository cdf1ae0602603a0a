"""The envelope every message travels in.

On the wire a message is one JSON object ``{"envelope": {...}, "body": {...}}``; the envelope says
what the body is (``type``), who sent it to whom, when, and how it relates to other messages.
"""

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

SCHEMA_VERSION = "1.0"
MAX_RECIPIENTS = 16
MAX_INT = 2**53 - 1  # the largest integer every JSON parser keeps exactly (RFC 8259 §6, I-JSON)

PartyId = Annotated[
    str,
    Field(
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="Actor identifier: lower-case letters, digits, '-' and '_' (it appears in topics).",
        examples=["tso", "dso-north", "bsp1"],
    ),
]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcTime = Annotated[AwareDatetime, AfterValidator(_utc)]
"""A timezone-aware instant, normalised to UTC. Naive datetimes are rejected."""


class Party(BaseModel):
    """An actor on the bus: its role and its identifier within the role."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    role: Literal["tso", "dso", "bsp", "mo", "all"] = Field(
        description="Role of the actor; 'all' addresses every actor (with id 'all')."
    )
    id: PartyId

    def __str__(self) -> str:
        return f"{self.role}/{self.id}"

    @classmethod
    def of(cls, role: str, id: str) -> "Party":
        """A party from a role and an id read as text (a topic, a command line, a 'role/id' string):
        validated, so a role that is not one of the five is a ValidationError."""
        return cls.model_validate({"role": role, "id": id})


class Envelope(BaseModel):
    """Metadata carried by every message. Unknown fields are rejected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    message_id: UUID = Field(description="Unique identifier of this message (UUID).")
    type: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="Message type: names the body's schema, e.g. 'delta_setpoint'.",
    )
    schema_version: Literal["1.0"] = Field(description="Version of the contract the body follows.")
    sender: Party = Field(description="Who sent the message.")
    recipients: list[Party] = Field(
        min_length=1,
        max_length=MAX_RECIPIENTS,
        description="Who the message is for (one or more actors, or a role with id 'all').",
    )
    sequence: int = Field(
        ge=0,
        le=MAX_INT,
        description=(
            "Sender's sequence number, counted per topic (sender, type, recipient) from 1, so that "
            "each receiver can detect gaps in its stream. 0 is used only by the last-will message."
        ),
    )
    created_at: UtcTime = Field(description="When the sender built the message (UTC, microseconds).")
    correlation_id: UUID | None = Field(
        default=None,
        description="Conversation this message belongs to (e.g. the merit order list it is about).",
    )
    causation_id: UUID | None = Field(
        default=None,
        description="The message this one answers or was caused by (for a response: the request's message_id).",
    )
    valid_until: UtcTime | None = Field(
        default=None, description="After this instant (UTC) the message must not be acted on."
    )
    reply_to: str | None = Field(
        default=None,
        max_length=512,
        description="Topic the answer to this request must be published on (mirrors MQTT 5 Response Topic).",
    )
