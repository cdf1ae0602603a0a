"""Code lists. Where ENTSO-E defines a code (IEC 62325 / ENTSO-E code list) its value is used, so
that a later CIM mapping is direct."""

from enum import StrEnum
from typing import Literal


class ProcessType(StrEnum):
    """ENTSO-E ProcessType: the balancing product."""

    AFRR = "A51"  # automatic frequency restoration reserve
    MFRR = "A47"  # manual frequency restoration reserve


class Direction(StrEnum):
    """ENTSO-E FlowDirection."""

    UP = "A01"
    DOWN = "A02"


class Resolution(StrEnum):
    """ISO 8601 durations used as ENTSO-E resolutions."""

    PT4S = "PT4S"  # aFRR setpoint resolution, CS review §IV.B
    PT1M = "PT1M"
    PT5M = "PT5M"  # requested-vs-delivered check period, CS review §IV.A
    PT15M = "PT15M"  # ISP / PTU


class Connection(StrEnum):
    """Where an asset is connected."""

    TN = "TN"  # transmission network
    DN = "DN"  # distribution network (behind a DSO)


class SystemState(StrEnum):
    """System states of the network code on emergency and restoration (Birk et al. 2017 §3)."""

    NORMAL = "normal"
    ALERT = "alert"
    EMERGENCY = "emergency"
    BLACKOUT = "blackout"
    RESTORATION = "restoration"


class BidStatus(StrEnum):
    """The DSO's verdict on one bid of a merit order list (CS review Fig. 4, 'check and clear')."""

    ACCEPTED = "accepted"
    LIMITED = "limited"
    REJECTED = "rejected"


class Quality(StrEnum):
    """Quality of a telemetered value (IEC 60870 style)."""

    GOOD = "good"
    ESTIMATED = "estimated"
    SUBSTITUTED = "substituted"
    STALE = "stale"
    INVALID = "invalid"


class RejectReason(StrEnum):
    """Why a receiving gateway refused a message."""

    OVERSIZE = "oversize"
    MALFORMED = "malformed"
    ENVELOPE = "envelope"
    UNKNOWN_TYPE = "unknown_type"
    TOPIC_MISMATCH = "topic_mismatch"
    UNAUTHORISED = "unauthorised"
    EXPIRED = "expired"
    DUPLICATE = "duplicate"
    SCHEMA = "schema"
    UNAUTHENTICATED = "unauthenticated"  # signature missing, invalid, or no key for the sender
    TIME_BOUNDS = "time_bounds"  # created_at from the future or too old; validity longer than the policy allows
    REFUSED = "refused"  # valid, but the actor refused it as implausible (the reason says which check)


MEASUREMENT_UNIT_MW: Literal["MAW"] = "MAW"  # ENTSO-E unit code for megawatt
