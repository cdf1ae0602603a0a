"""The fan-out benchmark delivers every setpoint to every endpoint on both paths (no timing asserted)."""

import pytest

from tsodso.testbed.bench.fanout import run_fanout


@pytest.mark.parametrize("senders", [1, 2])
def test_fanout_reaches_every_endpoint_every_cycle(own_mosquitto, senders):
    """From one sender process or spread over two (each the TSO's gateway on its own connection)."""
    result = run_fanout(own_mosquitto.url, endpoints=40, cycles=2, period_s=1.0, workers=2, senders=senders)
    assert result["senders"] == senders
    assert result["connected"] == 40
    for path in ("gateway", "raw"):
        assert result[path]["deliveries"] == 80, result[path]
        assert result[path]["missed_deliveries"] == 0 and result[path]["missed_cycles"] == 0
    assert result["ratio"] == pytest.approx(result["gateway"]["p99_ms"] / result["raw"]["p99_ms"], abs=0.002)
