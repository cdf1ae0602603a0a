"""Distribution grids, one function per grid, kept as plain pandapower nets (swap in a SimBench net
or your own: any net with named buses, an ``ext_grid`` at the TSO-DSO coupling point, line
``max_i_ka`` and transformer ``sn_mva`` ratings will do).

A scenario names a grid as a builder here (``nl_afrr_congestion``), a SimBench code
(``simbench:1-MV-rural--0-sw``) or a pandapower JSON file (``grids/my-feeder.json``, relative to the
scenario file), and its elements as ``table:name`` (``trafo:coupling``, ``sgen:pv-park``);
``tsodso grid show GRID`` lists them.
"""

import copy
import functools
from collections.abc import Callable, Iterable
from pathlib import Path

import pandapower as pp

GRIDS: dict[str, Callable[..., pp.pandapowerNet]] = {}


def grid(fn):
    """Register a grid builder under its function name."""
    GRIDS[fn.__name__] = fn
    return fn


@grid
def nl_afrr_congestion() -> pp.pandapowerNet:
    """The distribution grid of the §IV.B example (CS review).

    A 20 kV grid behind a 110/20 kV, 63 MVA TSO-DSO coupling transformer. The line behind the
    coupling transformer ('behind-coupling', 240 mm² Al XLPE cable, 421 A ≈ 14.6 MVA at 20 kV) feeds
    the north area: a CHP unit, a local load and the BSP's DER park (a 10 MW battery park that
    delivers the DN share of the BSP's aFRR bid). The south feeder carries a 16 MW PV park whose
    export overloads the 'south-pv' line: the DSO's own congestion, which it relieves by redispatch
    (PV south down, CHP north up: see the scenario's ``dso.redispatch``). That redispatch loads the
    line behind the coupling transformer, so the aFRR activation of the north DERs becomes the
    congestion of the example. Nothing here states the 15 MW limit: it is what the AC power flow
    gives for these data.

    Cable data: pandapower standard types (NA2XS2Y, 12/20 kV). Loads: MW / Mvar at the bus.
    """
    net = pp.create_empty_network(name="nl-afrr-congestion", sn_mva=1.0)
    hv = pp.create_bus(net, 110, name="hv")
    mv = pp.create_bus(net, 20, name="mv-main")
    north = pp.create_bus(net, 20, name="north-hub")
    der = pp.create_bus(net, 20, name="der-park")
    chp = pp.create_bus(net, 20, name="chp-north")
    south = pp.create_bus(net, 20, name="south-hub")
    pv = pp.create_bus(net, 20, name="pv-south")
    net.bus["min_vm_pu"] = 0.95
    net.bus["max_vm_pu"] = 1.05
    pp.create_ext_grid(net, hv, vm_pu=1.02, name="tso-coupling")
    pp.create_transformer(net, hv, mv, std_type="63 MVA 110/20 kV", name="coupling")
    cable_240, cable_185 = "NA2XS2Y 1x240 RM/25 12/20 kV", "NA2XS2Y 1x185 RM/25 12/20 kV"
    pp.create_line(net, mv, north, 2.0, cable_240, name="behind-coupling")
    pp.create_line(net, north, der, 1.5, cable_240, name="north-der")
    pp.create_line(net, north, chp, 1.0, cable_240, name="north-chp")
    pp.create_line(net, mv, south, 3.0, cable_185, name="south-feeder")
    pp.create_line(net, south, pv, 2.0, cable_185, name="south-pv")
    pp.create_load(net, north, p_mw=3.75, q_mvar=1.0, name="north-load")
    pp.create_load(net, south, p_mw=6.0, q_mvar=1.5, name="south-load")
    pp.create_load(net, mv, p_mw=20.0, q_mvar=4.0, name="mv-load")
    pp.create_sgen(net, chp, p_mw=6.0, name="chp")
    pp.create_sgen(net, pv, p_mw=16.0, name="pv-park")
    return net


@grid
def rural_village() -> pp.pandapowerNet:
    """A rural 20 kV grid: the second DSO of the schemes comparison (scenarios/schemes-comparison).

    A 110/20 kV, 25 MVA coupling transformer feeds a village over 6 km of 150 mm² cable (NA2XS2Y,
    319 A ≈ 11 MVA) at a 7 MW load (its evening peak is a scenario condition on top); home
    batteries and an EV fleet in the village can discharge (up) or charge (down). A wind farm on a
    second feeder exports 8 MW."""
    net = pp.create_empty_network(name="rural-evening-peak", sn_mva=1.0)
    hv = pp.create_bus(net, 110, name="hv")
    mv = pp.create_bus(net, 20, name="mv-main")
    village = pp.create_bus(net, 20, name="village")
    wind = pp.create_bus(net, 20, name="wind")
    net.bus["min_vm_pu"] = 0.92
    net.bus["max_vm_pu"] = 1.08
    pp.create_ext_grid(net, hv, vm_pu=1.03, name="tso-coupling")
    pp.create_transformer(net, hv, mv, std_type="25 MVA 110/20 kV", name="coupling")
    pp.create_line(net, mv, village, 6.0, "NA2XS2Y 1x150 RM/25 12/20 kV", name="village-feeder")
    pp.create_line(net, mv, wind, 4.0, "NA2XS2Y 1x240 RM/25 12/20 kV", name="wind-feeder")
    pp.create_load(net, village, p_mw=7.0, q_mvar=2.5, name="village-load")
    pp.create_load(net, mv, p_mw=4.0, q_mvar=1.0, name="town-load")
    pp.create_sgen(net, wind, p_mw=8.0, name="wind-farm")
    return net


KNOWN = "a builder ({}), simbench:<code> or a pandapower JSON file (*.json)"


class GridError(KeyError):
    """A grid that cannot be built, or an element or bus it does not have: the message says what is valid."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def build(name: str) -> pp.pandapowerNet:
    """The grid ``name``: a registered builder (``GRIDS``), a SimBench code (``simbench:CODE``) or a
    pandapower JSON file (``*.json``). Each is built once per process; every caller gets its own copy."""
    stamp = None
    if name.endswith(".json") and Path(name).is_file():
        stat = Path(name).stat()
        stamp = (stat.st_mtime_ns, stat.st_size)  # a file edited since is read again
    return copy.deepcopy(_built(name, stamp))


@functools.lru_cache(maxsize=16)
def _built(name: str, stamp: tuple[int, int] | None = None) -> pp.pandapowerNet:
    if name.startswith("simbench:"):
        import simbench

        code = name.split(":", 1)[1]
        try:
            net = simbench.get_simbench_net(code)
        except Exception as exc:  # simbench says why in its own words (unknown code, bad syntax)
            raise GridError(f"grid {name!r}: not a SimBench code ({str(exc).splitlines()[0][:160]})") from None
        net.name = net.name or name
        return net
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise GridError(f"grid {name!r}: no such file")
        try:
            net = pp.from_json(str(path))
        except Exception as exc:  # not JSON, or not a pandapower net
            raise GridError(f"grid {name!r}: not a pandapower JSON net ({str(exc).splitlines()[0][:160]})") from None
        net.name = net.name or path.stem
        return net
    if name not in GRIDS:
        raise GridError(f"unknown grid {name!r}; use " + KNOWN.format(", ".join(sorted(GRIDS))))
    return GRIDS[name]()


def names(net: pp.pandapowerNet, table: str) -> list[str]:
    """The names in one of the grid's tables (``bus``, ``line``, ``trafo``, ``sgen``, ``load``...)."""
    if table not in net or not hasattr(net[table], "name"):
        return []
    return [str(n) for n in net[table].name if n is not None and n == n]


def _some(items: Iterable[str], limit: int = 8) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items)} in all)" if len(items) > limit else shown or "none"


def element_problem(net: pp.pandapowerNet, ref: str, tables: tuple[str, ...]) -> str | None:
    """Why ``ref`` ('table:name') is not one element of ``tables`` in the grid, or None when it is."""
    table, sep, name = ref.partition(":")
    if not sep or table not in tables:
        return f"{ref!r} is not 'table:name' with table one of {', '.join(tables)}"
    found = names(net, table)
    if found.count(name) != 1:
        what = "twice" if found.count(name) > 1 else "not"
        return f"{table} {name!r} is {what} in grid {net.name!r}; its {table}s: {_some(found)}"
    return None


def bus_problem(net: pp.pandapowerNet, name: str) -> str | None:
    """Why ``name`` is not one bus of the grid, or None when it is."""
    found = names(net, "bus")
    if found.count(name) != 1:
        return f"bus {name!r} is {'twice' if found.count(name) > 1 else 'not'} in grid {net.name!r}; its buses: {_some(found)}"
    return None


def bus_index(net: pp.pandapowerNet, name: str) -> int:
    """Index of the bus called ``name``; KeyError names the buses there are."""
    hits = net.bus.index[net.bus.name == name]
    if len(hits) != 1:
        raise GridError(bus_problem(net, name))
    return int(hits[0])


def element_index(net: pp.pandapowerNet, table: str, name: str) -> int:
    hits = net[table].index[net[table].name == name]
    if len(hits) != 1:
        raise GridError(element_problem(net, f"{table}:{name}", (table,)))
    return int(hits[0])
