"""The interface every actor uses to reach the bus. Knows MQTT and the contract; knows nothing of
TSOs or grids."""

from gateway.arrival import Received, Rejected, Trust
from gateway.client import Gateway, GatewayFailed, PayloadTooLarge, RequestTimeout
from gateway.connection import BrokerSpec
from gateway.exchange_log import ExchangeLog
from gateway.links import LinkConditions, LinkImpairment
from gateway.policy import DELIVERY_POLICY, DeliveryPolicy

__all__ = [
    "Gateway",
    "GatewayFailed",
    "Received",
    "Rejected",
    "Trust",
    "RequestTimeout",
    "PayloadTooLarge",
    "BrokerSpec",
    "ExchangeLog",
    "DELIVERY_POLICY",
    "DeliveryPolicy",
    "LinkConditions",
    "LinkImpairment",
]
