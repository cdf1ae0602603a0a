"""The open testbed for TSO-DSO coordination.

Five rooms, each importing only those before it: ``tsodso.schemas`` (the message contract) ←
``tsodso.gateway`` (the bus: MQTT or in memory) ← ``tsodso.actors`` (TSO, DSO, BSP, market operator:
pure cores and thin agents) ← ``tsodso.testbed`` (scenarios, runs, reports, conformance, benchmarks);
``tsodso.broker`` starts and configures brokers. ``docs/architecture.md`` draws the map.
"""
