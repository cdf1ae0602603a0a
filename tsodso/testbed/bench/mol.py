"""`tsodso bench mol`: how long the DSO takes to validate a merit order list, exactly.

N random aFRR bids (seeded) at the MV buses of a grid (a SimBench MV grid by default), half up and
half down, 0.02-0.3 MW each, validated jointly along the merit order by :func:`actors.validation.validate_mol`
(AC power flows through lightsim2grid). The baseline runs the same search with ``pp.runpp`` for
every power flow, on fewer bids, and is scaled to N. The final state of each direction is audited
with ``pp.runpp``: the engine's loadings must agree with pandapower's.
"""

import copy
import math
import platform
import random
import time
import warnings
from typing import Any

import numpy as np
import pandapower as pp

from tsodso.actors import grid as grids
from tsodso.actors.powerflow import FastAC
from tsodso.actors.validation import validate_mol
from tsodso.schemas.codes import BidStatus, Connection, Direction
from tsodso.schemas.messages import BidAsset, MolEntry


def random_mol(
    net: pp.pandapowerNet, n: int, seed: int = 1, low_mw: float = 0.02, high_mw: float = 0.3
) -> list[MolEntry]:
    rng = random.Random(seed)
    mv = [str(name) for name, vn in zip(net.bus.name, net.bus.vn_kv) if 1.0 < vn < 70.0]
    entries = []
    for i in range(n):
        direction = Direction.UP if i % 2 == 0 else Direction.DOWN
        quantity = round(rng.uniform(low_mw, high_mw), 2)
        entries.append(
            MolEntry(
                rank=i // 2 + 1,
                bid_id=f"bid{i}",
                bsp_id=f"bsp{i % 7}",
                direction=direction,
                price_eur_per_mwh=50 + i // 2,
                quantity_mw=quantity,
                upper_bound_mw=quantity,
                assets=[
                    BidAsset(
                        asset_id=f"der{i}",
                        connection=Connection.DN,
                        dso_id="dso",
                        connection_bus=rng.choice(mv),
                        share_mw=quantity,
                    )
                ],
            )
        )
    return entries


class RunppAC(FastAC):
    """The baseline: the same interface, every power flow a ``pp.runpp``."""

    def solve(self, injections):
        from tsodso.actors.powerflow import GridState

        net = self.net
        vec = injections if isinstance(injections, np.ndarray) else self.vector(injections)
        for i, bus in enumerate(self.flex_order):
            net.sgen.at[self.flex[bus], "p_mw"] = float(vec[i])
        try:
            pp.runpp(net, numba=False)
        except pp.LoadflowNotConverged:
            return GridState(
                np.full(len(net.line), np.inf), np.full(len(net.trafo), np.inf), np.zeros(len(net.bus)), converged=False
            )
        return GridState(
            net.res_line.loading_percent.fillna(0).values,
            net.res_trafo.loading_percent.fillna(0).values,
            net.res_bus.vm_pu.values,
        )


def run_mol(
    grid: str = "simbench:1-MV-semiurb--0-sw", n: int = 1000, baseline_n: int = 6, repeat: int = 5
) -> dict[str, Any]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = grids.build(grid)
        names = {str(b): i for i, b in zip(net.bus.index, net.bus.name)}

        def bus_of(name: str) -> int:
            return names[name]

        t0 = time.perf_counter()
        fast = FastAC(net, net.bus.index)
        prepare_ms = (time.perf_counter() - t0) * 1000
        mol = random_mol(net, n)
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            validated = validate_mol(fast, mol, "dso", bus_of)
            times.append((time.perf_counter() - t0) * 1000)
        counts = {s.value: sum(r.status == s for r in validated.results) for s in BidStatus}
        # audit: the final state of each direction in pandapower
        disagreement = 0.0
        worst_audit = 0.0
        for _direction, injections in validated.injections.items():
            audited = fast.audit(injections)
            engine = fast.solve(injections)
            disagreement = max(
                disagreement, float(np.nanmax(np.abs(audited.res_line.loading_percent.values - engine.line_loading)))
            )
            worst_audit = max(worst_audit, 1e9 if fast.violations(engine) else 0.0)
        # real-time check: one power flow of the telemetered state and its violations
        rt = []
        inj = validated.injections[Direction.UP]
        for _ in range(200):
            t0 = time.perf_counter()
            fast.violations(fast.solve(inj))
            rt.append((time.perf_counter() - t0) * 1000)
        # baseline: pp.runpp for every power flow, on baseline_n bids of the same list
        slow = RunppAC(copy.deepcopy(net), net.bus.index)
        subset = [e for e in mol if int(e.bid_id[3:]) < baseline_n]
        t0 = time.perf_counter()
        validate_mol(slow, subset, "dso", bus_of)
        baseline_ms = (time.perf_counter() - t0) * 1000 * n / len(subset)
    value = sorted(times)[len(times) // 2]
    return {
        "benchmark": "mol",
        "metric": "validation_time",
        "value": round(value, 2),
        "unit": "ms",
        "goal": f"<= 150 ms for 1000 bids on one core (here {n} bids)",
        "baseline": f"the same search with pp.runpp for every power flow, {len(subset)} bids scaled to {n}",
        "baseline_value": round(baseline_ms, 1),
        "ratio": round(value / baseline_ms, 6),
        "bids": n,
        "grid": grid,
        "buses": len(net.bus),
        "lines": len(net.line),
        "verdicts": counts,
        "prepare_ms": round(prepare_ms, 1),
        "validation_ms_runs": [round(t, 2) for t in times],
        "realtime_check_ms_p50": round(sorted(rt)[len(rt) // 2], 4),
        "realtime_check_ms_p99": round(sorted(rt)[math.ceil(0.99 * len(rt)) - 1], 4),
        "engine_vs_runpp_max_loading_diff_percent": round(disagreement, 6),
        "violations_left_at_limits": worst_audit > 0,
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
    }
