"""The interface every actor uses to reach the bus. Knows MQTT and the contract; knows nothing of
TSOs or grids."""

from tsodso.gateway.arrival import Received, Rejected, Trust
from tsodso.gateway.client import Gateway, GatewayFailed, PayloadTooLarge, RequestTimeout
from tsodso.gateway.connection import BrokerSpec
from tsodso.gateway.exchange_log import ExchangeLog
from tsodso.gateway.links import LinkConditions, LinkImpairment
from tsodso.gateway.policy import DELIVERY_POLICY, DeliveryPolicy

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
