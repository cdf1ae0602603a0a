"""Brokers the testbed starts or points at: the embedded broker (pure Python, installed with the project),
Mosquitto with the project's configuration, or any MQTT URL. Used by ``testbed`` only."""

from tsodso.broker.launch import RunningBroker, free_port, start_broker, wait_for_port

__all__ = ["RunningBroker", "free_port", "start_broker", "wait_for_port"]
