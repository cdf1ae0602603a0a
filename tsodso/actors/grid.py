"""Distribution grids, one function per grid, kept as plain pandapower nets (swap in a SimBench net
or your own: any net with named buses, an ``ext_grid`` at the TSO-DSO coupling point, line
``max_i_ka`` and transformer ``sn_mva`` ratings will do).
"""

from collections.abc import Callable

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


def build(name: str) -> pp.pandapowerNet:
    """Build a registered grid by name (``GRIDS``), or a SimBench grid by its code (``simbench:CODE``)."""
    if name.startswith("simbench:"):
        import simbench

        return simbench.get_simbench_net(name.split(":", 1)[1])
    try:
        return GRIDS[name]()
    except KeyError:
        raise KeyError(f"unknown grid {name!r}; known: {', '.join(sorted(GRIDS))} or simbench:<code>") from None


def bus_index(net: pp.pandapowerNet, name: str) -> int:
    """Index of the bus called ``name``; KeyError names the buses there are."""
    hits = net.bus.index[net.bus.name == name]
    if len(hits) != 1:
        raise KeyError(f"bus {name!r} is not in grid {net.name!r}")
    return int(hits[0])


def element_index(net: pp.pandapowerNet, table: str, name: str) -> int:
    hits = net[table].index[net[table].name == name]
    if len(hits) != 1:
        raise KeyError(f"{table} {name!r} is not in grid {net.name!r}")
    return int(hits[0])
