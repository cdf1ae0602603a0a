"""Delivery policy per message type: MQTT QoS, retain flag and message expiry.

One table. ``expiry_s`` becomes the MQTT 5 Message Expiry Interval and the envelope's
``valid_until`` (the only expiry an MQTT 3.1.1 broker carries); None means the message does not
expire. Why each row is what it is:

- setpoints expire within their 4 s cycle (CS review §IV.B): an old setpoint must never be followed;
- everything the market and the operators rely on (MOL, validation, acceptance, limits,
  emergencies, settlement) is QoS 1, queued for an actor that is away;
- telemetry is QoS 0 and short-lived: the next sample replaces a lost one 4 s later;
- presence and system state are retained, so a newcomer learns them at once.
"""

from dataclasses import dataclass

MAX_VALIDITY_S = 2 * 86400.0
"""Longest a message may claim to be valid, and oldest it may be when it arrives (a day-ahead bid for
the last ISP of tomorrow; QoS 1 messages queued for an actor that was away): beyond it a message is
refused as a replay or a forgery (``gateway.arrival``)."""


@dataclass(frozen=True)
class DeliveryPolicy:
    qos: int
    retain: bool = False
    expiry_s: float | None = None
    max_validity_s: float | None = None  # longest valid_until - created_at accepted; None: the expiry

    @property
    def validity_limit_s(self) -> float:
        """The longest validity (and age) a receiver accepts for this type [s]."""
        if self.max_validity_s is not None:
            return self.max_validity_s
        return self.expiry_s if self.expiry_s is not None else MAX_VALIDITY_S


DELIVERY_POLICY: dict[str, DeliveryPolicy] = {
    "prequalification_request": DeliveryPolicy(qos=1),
    "prequalification_forward": DeliveryPolicy(qos=1),
    "prequalification_result": DeliveryPolicy(qos=1),
    "schedule": DeliveryPolicy(qos=1),
    "forecast": DeliveryPolicy(qos=1),
    "energy_bid": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),  # valid to its ISP's end
    "merit_order_list": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),
    "mol_validation": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),
    "offer_acceptance": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),
    "flexibility_need": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),
    "market_result": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),
    "flex_activation": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),
    "delta_setpoint": DeliveryPolicy(qos=1, expiry_s=4),
    "telemetry": DeliveryPolicy(qos=0, expiry_s=8),
    "termination_signal": DeliveryPolicy(qos=1, expiry_s=60),
    "activation_limit": DeliveryPolicy(qos=1, expiry_s=900, max_validity_s=MAX_VALIDITY_S),
    "system_state": DeliveryPolicy(qos=1, retain=True),
    "curtailment_request": DeliveryPolicy(qos=1, expiry_s=300),
    "curtailment_response": DeliveryPolicy(qos=1, expiry_s=300),
    "fault_report": DeliveryPolicy(qos=1),
    "actor_state": DeliveryPolicy(qos=1, retain=True),
    "heartbeat": DeliveryPolicy(qos=0, expiry_s=10),
    "settlement_report": DeliveryPolicy(qos=1),
    "monitoring_report": DeliveryPolicy(qos=1),
    "rejection": DeliveryPolicy(qos=1, expiry_s=300),
}
