"""Delivery policy per message type: MQTT QoS, retain flag and message expiry.

One table. ``expiry_s`` becomes the MQTT 5 Message Expiry Interval and the envelope's
``valid_until`` (the only expiry an MQTT 3.1.1 broker carries); None means the message does not
expire. Why each row is what it is:

- setpoints expire within their 4 s cycle (seed 000 §IV.B): an old setpoint must never be followed;
- everything the market and the operators rely on (MOL, validation, acceptance, limits,
  emergencies, settlement) is QoS 1, queued for an actor that is away;
- telemetry is QoS 0 and short-lived: the next sample replaces a lost one 4 s later;
- presence and system state are retained, so a newcomer learns them at once.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class DeliveryPolicy:
    qos: int
    retain: bool = False
    expiry_s: float | None = None


DELIVERY_POLICY: dict[str, DeliveryPolicy] = {
    "prequalification_request": DeliveryPolicy(qos=1),
    "prequalification_forward": DeliveryPolicy(qos=1),
    "prequalification_result": DeliveryPolicy(qos=1),
    "schedule": DeliveryPolicy(qos=1),
    "forecast": DeliveryPolicy(qos=1),
    "energy_bid": DeliveryPolicy(qos=1, expiry_s=900),
    "merit_order_list": DeliveryPolicy(qos=1, expiry_s=900),
    "mol_validation": DeliveryPolicy(qos=1, expiry_s=900),
    "offer_acceptance": DeliveryPolicy(qos=1, expiry_s=900),
    "flexibility_need": DeliveryPolicy(qos=1, expiry_s=900),
    "market_result": DeliveryPolicy(qos=1, expiry_s=900),
    "flex_activation": DeliveryPolicy(qos=1, expiry_s=900),
    "delta_setpoint": DeliveryPolicy(qos=1, expiry_s=4),
    "telemetry": DeliveryPolicy(qos=0, expiry_s=8),
    "termination_signal": DeliveryPolicy(qos=1, expiry_s=60),
    "activation_limit": DeliveryPolicy(qos=1, expiry_s=900),
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


def policy_for(type_name: str) -> DeliveryPolicy:
    return DELIVERY_POLICY[type_name]
