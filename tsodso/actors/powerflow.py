"""AC power flow for the DSO's decisions: fast through lightsim2grid, audited with pandapower.

``pp.runpp`` spends 30-45 ms per call on these grids, mostly converting the net; lightsim2grid
(pandapower's C++ backend) solves the same AC equations on a model converted once, in ~0.03 ms
(measured here; BENCHMARKS.md). :class:`FastAC` converts the DSO's net once, with one extra static
generator per bus where flexibility may be activated ("flex" injections, MW, generation positive),
and then solves any set of flex injections. :meth:`FastAC.audit` runs ``pp.runpp`` on the same
state, so the pandapower net stays the model users see and can re-check.
"""

import copy
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandapower as pp

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from lightsim2grid.network import init_from_pandapower


@dataclass
class GridState:
    """Loadings and voltages of one power flow. Loadings in % of rating, voltages in p.u."""

    line_loading: np.ndarray
    trafo_loading: np.ndarray
    vm_pu: np.ndarray
    converged: bool = True


@dataclass(frozen=True)
class Violation:
    """A limit the activation would break (or worsen)."""

    element: str  # 'line:behind-coupling', 'trafo:coupling', 'bus:der-park'
    value: float  # loading in %, or voltage in p.u.
    limit: float

    @property
    def excess(self) -> float:
        return self.value - self.limit if self.element.startswith(("line", "trafo")) else abs(self.value - self.limit)


def without_switches(net: pp.pandapowerNet) -> tuple[pp.pandapowerNet, dict[int, int]]:
    """The same grid with its switches applied (lightsim2grid models no switches): buses joined by
    a closed bus-bus switch are fused, lines and transformers behind an open switch are taken out of
    service. Returns the new net and, for every fused-away bus, the bus it became."""
    net = copy.deepcopy(net)
    fused: dict[int, int] = {}
    sw = net.switch
    if len(sw):
        for _, s in sw[(sw.et == "l") & ~sw.closed.astype(bool)].iterrows():
            net.line.at[s.element, "in_service"] = False
        for _, s in sw[(sw.et == "t") & ~sw.closed.astype(bool)].iterrows():
            net.trafo.at[s.element, "in_service"] = False
        for _, s in sw[(sw.et == "b") & sw.closed.astype(bool)].iterrows():
            keep, drop = fused.get(int(s.bus), int(s.bus)), fused.get(int(s.element), int(s.element))
            if keep != drop:
                pp.toolbox.fuse_buses(net, keep, drop)
                fused = {k: (keep if v == drop else v) for k, v in fused.items()}
                fused[drop] = keep
        net.switch = net.switch.iloc[0:0]
    for table in ("sgen", "load", "gen", "storage"):
        for col in ("min_p_mw", "max_p_mw", "min_q_mvar", "max_q_mvar"):
            if col in net[table]:
                net[table][col] = net[table][col].astype(float)
    return net, fused


@dataclass
class FastAC:
    """One DSO grid prepared for many AC power flows that differ only in flex injections."""

    net: pp.pandapowerNet
    flex_buses: Iterable[int]
    vm_limits: tuple[float, float] = (0.95, 1.05)  # used where the net has no min/max_vm_pu
    flex: dict[int, int] = field(init=False)  # bus -> sgen index in the prepared net

    def __post_init__(self) -> None:
        self.net, self.fused = without_switches(self.net)
        net = self.net
        self.flex = {}
        for bus in sorted({self.fused.get(int(b), int(b)) for b in self.flex_buses}):
            self.flex[bus] = int(pp.create_sgen(net, bus, p_mw=0.0, name=f"flex:{net.bus.name.at[bus]}"))
        pp.runpp(net, numba=False)
        self._v0 = (net.res_bus.vm_pu.values * np.exp(1j * np.deg2rad(net.res_bus.va_degree.values))).astype(complex)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model = init_from_pandapower(net)
        sgen_pos = {idx: pos for pos, idx in enumerate(net.sgen.index)}
        self.flex_order = list(self.flex)  # flex vectors are aligned with this list of buses
        self._flex_index = {bus: i for i, bus in enumerate(self.flex_order)}
        self._flex_sgen = np.array([sgen_pos[self.flex[b]] for b in self.flex_order], dtype=int)
        self._sgen_p = net.sgen.p_mw.values.astype(np.float64) * net.sgen.scaling.values.astype(np.float64)
        self._sgen_all = np.ones(len(net.sgen), dtype=bool)
        self._limits_cache: dict[int, tuple] = {}
        line = net.line
        self._line_imax = (line.max_i_ka * line.df * line.parallel).values
        trafo = net.trafo
        scale = (trafo.parallel * trafo.df).values if "df" in trafo else trafo.parallel.values
        self._trafo_i_hv = (trafo.sn_mva / (np.sqrt(3) * trafo.vn_hv_kv)).values * scale
        self._trafo_i_lv = (trafo.sn_mva / (np.sqrt(3) * trafo.vn_lv_kv)).values * scale
        bus = net.bus
        self._vmin = (
            (bus.min_vm_pu if "min_vm_pu" in bus else bus.vn_kv * 0 + self.vm_limits[0])
            .fillna(self.vm_limits[0])
            .values
        )
        self._vmax = (
            (bus.max_vm_pu if "max_vm_pu" in bus else bus.vn_kv * 0 + self.vm_limits[1])
            .fillna(self.vm_limits[1])
            .values
        )
        self.names = {
            "line": [f"line:{n}" for n in line.name.fillna("").values] if len(line) else [],
            "trafo": [f"trafo:{n}" for n in trafo.name.fillna("").values] if len(trafo) else [],
            "bus": [f"bus:{n}" for n in bus.name.fillna("").values],
        }
        self._line_in_service = line.in_service.values.astype(bool)
        self.base = self.solve({})

    def vector(self, injections: Mapping[int, float]) -> np.ndarray:
        """Flex injections (bus of the original net -> MW) as a vector aligned with ``flex_order``."""
        vec = np.zeros(len(self.flex_order))
        for bus, mw in injections.items():
            vec[self._flex_index[self.fused.get(bus, bus)]] += mw
        return vec

    def injections(self, vec: np.ndarray) -> dict[int, float]:
        return {self.flex_order[i]: float(vec[i]) for i in np.nonzero(vec)[0]}

    def solve(self, injections: Mapping[int, float] | np.ndarray) -> GridState:
        """AC power flow with ``injections`` (bus index -> MW, generation positive, or a flex vector)."""
        vec = injections if isinstance(injections, np.ndarray) else self.vector(injections)
        p = self._sgen_p.copy()
        p[self._flex_sgen] = vec
        self.model.update_sgens_p(self._sgen_all, p.astype(np.float32))
        v = self.model.ac_pf(self._v0, 30, 1e-8)
        if len(v) == 0:
            n = len(self.net.bus)
            return GridState(
                np.full(len(self._line_imax), np.inf),
                np.full(len(self._trafo_i_hv), np.inf),
                np.zeros(n),
                converged=False,
            )
        _, _, _, a1 = self.model.get_line_res1()
        _, _, _, a2 = self.model.get_line_res2()
        line_loading = np.maximum(np.abs(a1), np.abs(a2)) / self._line_imax * 100.0
        if len(self._trafo_i_hv):
            _, _, _, t1 = self.model.get_trafo_res1()
            _, _, _, t2 = self.model.get_trafo_res2()
            trafo_loading = np.maximum(np.abs(t1) / self._trafo_i_hv, np.abs(t2) / self._trafo_i_lv) * 100.0
        else:
            trafo_loading = np.zeros(0)
        return GridState(line_loading, trafo_loading, np.abs(v))

    worsen_tolerance_percent: float = 0.5
    worsen_tolerance_pu: float = 0.002

    def violations(self, state: GridState, reference: GridState | None = None, *, tol: float = 1e-6) -> list[Violation]:
        """Limits broken in ``state`` that are not already broken in ``reference`` (the base case by
        default): an activation may not create a violation, nor worsen one that exists without it by
        more than ``worsen_tolerance_percent`` (percentage points) or ``worsen_tolerance_pu``; it is
        not blamed for the violation itself, nor for the hundredths of a percent any injection
        anywhere moves it by. Worst first."""
        if not state.converged:
            return [Violation("powerflow:diverged", float("inf"), 0.0)]
        line_limit, trafo_limit, vmax, vmin = self._limits(reference or self.base)
        line_over = state.line_loading > line_limit + tol
        trafo_over = state.trafo_loading > trafo_limit + tol
        v_high = state.vm_pu > vmax + tol
        v_low = state.vm_pu < vmin - tol
        if not (line_over.any() or trafo_over.any() or v_high.any() or v_low.any()):
            return []
        out = []
        for i in np.nonzero(line_over)[0]:
            out.append(Violation(self.names["line"][i], float(state.line_loading[i]), float(line_limit[i])))
        for i in np.nonzero(trafo_over)[0]:
            out.append(Violation(self.names["trafo"][i], float(state.trafo_loading[i]), float(trafo_limit[i])))
        for i in np.nonzero(v_high)[0]:
            out.append(Violation(self.names["bus"][i], float(state.vm_pu[i]), float(vmax[i])))
        for i in np.nonzero(v_low)[0]:
            out.append(Violation(self.names["bus"][i], float(state.vm_pu[i]), float(vmin[i])))
        return sorted(out, key=lambda v: -v.excess)

    def _limits(self, base: GridState) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cached = self._limits_cache.get(id(base))
        if cached is None or cached[0] is not base:
            pre = self.worsen_tolerance_percent
            in_service = np.where(self._line_in_service, 0.0, np.inf)
            line_limit = np.where(base.line_loading > 100.0, base.line_loading + pre, 100.0) + in_service
            trafo_limit = np.where(base.trafo_loading > 100.0, base.trafo_loading + pre, 100.0)
            vmax = np.where(base.vm_pu > self._vmax, base.vm_pu + self.worsen_tolerance_pu, self._vmax)
            vmin = np.where(base.vm_pu < self._vmin, base.vm_pu - self.worsen_tolerance_pu, self._vmin)
            if len(self._limits_cache) > 64:
                self._limits_cache.clear()
            cached = self._limits_cache[id(base)] = (
                base,
                (line_limit, trafo_limit, np.nan_to_num(vmax, nan=np.inf), np.nan_to_num(vmin, nan=-np.inf)),
            )
        return cached[1]

    def state_key(self, injections: Mapping[int, float] | np.ndarray) -> bytes:
        """What :meth:`audit`'s net depends on, as bytes: the injections and the base net's loads,
        generation and switching (equal keys, equal nets)."""
        vec = injections if isinstance(injections, np.ndarray) else self.vector(injections)
        net = self.net
        parts = [np.asarray(vec, dtype=float).tobytes()]
        for table, column in (("load", "p_mw"), ("load", "q_mvar"), ("sgen", "p_mw"), ("gen", "p_mw")):
            parts.append(net[table][column].to_numpy(dtype=float).tobytes())
        for table in ("line", "trafo", "load", "sgen", "gen"):
            parts.append(net[table]["in_service"].to_numpy(dtype=bool).tobytes())
        return b"|".join(parts)

    def audit(self, injections: Mapping[int, float] | np.ndarray) -> pp.pandapowerNet:
        """The same state solved by ``pp.runpp``: a pandapower net anyone can re-check."""
        vec = injections if isinstance(injections, np.ndarray) else self.vector(injections)
        net = copy.deepcopy(self.net)
        for i, bus in enumerate(self.flex_order):
            net.sgen.at[self.flex[bus], "p_mw"] = float(vec[i])
        pp.runpp(net, numba=False)
        return net

    def flow(self, element: str) -> tuple[float, float]:
        """(P [MW], Q [Mvar]) into ``element`` ('trafo:<name>' at its HV side, 'line:<name>' at its
        from side) in the last :meth:`solve`."""
        table, name = element.split(":", 1)
        position = list(self.net[table].name).index(name)
        p, q, _, _ = self.model.get_trafo_res1() if table == "trafo" else self.model.get_line_res1()
        return float(p[position]), float(q[position])

    def loadings(self, state: GridState) -> dict[str, float]:
        """Every line's and transformer's loading in % ('line:<name>', 'trafo:<name>')."""
        return {
            **dict(zip(self.names["line"], map(float, state.line_loading))),
            **dict(zip(self.names["trafo"], map(float, state.trafo_loading))),
        }

    def max_line_loading(self, state: GridState) -> tuple[str, float]:
        """The most loaded line or transformer and its loading in %."""
        loads = list(zip(self.names["line"], state.line_loading)) + list(zip(self.names["trafo"], state.trafo_loading))
        name, value = max(loads, key=lambda x: x[1])
        return name, float(value)
