"""The message contract of the TSO-DSO-BSP testbed.

pydantic v2 models for every message family (``schemas.messages``), the envelope that wraps them
(``schemas.envelope``), the topic namespace (``schemas.topics``) and the bilateral table of who may
send what to whom (``schemas.rights``). Nothing here knows about MQTT.
"""

from tsodso.schemas.envelope import SCHEMA_VERSION, Envelope, Party
from tsodso.schemas.messages import MESSAGE_TYPES, Body, body_type

__all__ = ["SCHEMA_VERSION", "Envelope", "Party", "MESSAGE_TYPES", "Body", "body_type"]
