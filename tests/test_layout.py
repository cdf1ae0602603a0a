"""The package's layering, read from the source: dependencies point one way (schemas ← gateway ←
actors ← testbed; broker after gateway, for the testbed), and the operators' cores and the papers' rules
have no I/O. A change that imports against the grain fails here, naming the module and the import."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tsodso"
ROOMS = ("schemas", "gateway", "actors", "broker", "testbed")
MAY_IMPORT = {
    "schemas": {"schemas"},
    "gateway": {"schemas", "gateway"},
    "actors": {"schemas", "gateway", "actors"},
    "broker": {"schemas", "gateway", "broker"},
    "testbed": set(ROOMS),
}
# Decisions apart from I/O: the cores, the rules and the schemes' registry import no bus and no event loop.
PURE = ("tso_core", "dso_core", "bsp_core", "mo_core", "rules", "coordination", "outbox")
IO_MODULES = {"asyncio", "gmqtt", "aiomqtt", "paho", "socket", "tsodso.gateway"}
MQTT_CLIENTS = ("gmqtt", "aiomqtt", "paho")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules(room: str) -> list[Path]:
    return sorted((PACKAGE / room).rglob("*.py"))


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_imports_only_the_rooms_before_it(room):
    against = [
        f"{path.relative_to(PACKAGE.parent)} imports {name}"
        for path in _modules(room)
        for name in _imports(path)
        if name.startswith("tsodso.") and name.split(".")[1] not in MAY_IMPORT[room]
    ]
    assert not against, "\n".join(against)


def test_the_cores_and_the_rules_do_no_io():
    impure = [
        f"actors/{module}.py imports {name}"
        for module in PURE
        for name in _imports(PACKAGE / "actors" / f"{module}.py")
        if any(name == io or name.startswith(io + ".") for io in IO_MODULES)
    ]
    assert not impure, "\n".join(impure)


def test_no_top_level_import_name_but_tsodso():
    """Installing the project claims one import name; the rooms live inside it."""
    tops = {path.name for path in PACKAGE.parent.iterdir() if (path / "__init__.py").exists()}
    assert tops == {"tsodso", "tests"}


def test_one_module_owns_the_mqtt_client():
    """Only gateway/mqtt.py imports the MQTT client library; everything else speaks through it."""
    owners = {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in MQTT_CLIENTS
    }
    assert owners == {"tsodso/gateway/mqtt.py"}


def test_one_module_owns_the_iec104_library():
    """Only gateway/iec104.py imports c104 (lib60870): the bridge and the site emulator speak through it."""
    owners = {
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] == "c104"
    }
    assert owners == {"tsodso/gateway/iec104.py"}
