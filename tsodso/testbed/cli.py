"""The `tsodso` command line."""

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from tsodso.gateway.loop import run as run_batched

if TYPE_CHECKING:
    from tsodso.broker.launch import RunningBroker
    from tsodso.schemas.esmp import Coding

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"  # the shipped scenarios: defaults work from any folder
REFERENCE_SCENARIO = SCENARIOS / "nl-afrr-congestion.yaml"
COMPARISON_SCENARIO = SCENARIOS / "schemes-comparison.yaml"

app = typer.Typer(
    rich_markup_mode=None, add_completion=False, no_args_is_help=True, help="TSO-DSO-BSP coordination testbed."
)
schemas_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="The message contract: export and validate."
)
broker_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Run a broker with the project's configuration."
)
bench_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Benchmarks (results belong in BENCHMARKS.md)."
)
secure_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="Identities of a secured deployment: keys, passwords, access list.",
)
app.add_typer(schemas_app, name="schemas")
app.add_typer(broker_app, name="broker")
app.add_typer(bench_app, name="bench")
app.add_typer(secure_app, name="secure")
grid_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="The DSOs' grids: what a scenario can name in them."
)
app.add_typer(grid_app, name="grid")
bridge_app = typer.Typer(
    rich_markup_mode=None, no_args_is_help=True, help="Field protocols at the edge: a BSP's site on IEC 60870-5-104."
)
app.add_typer(bridge_app, name="bridge")
esmp_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="ENTSO-E documents (IEC 62325 / ESMP): a run's bids, merit order lists, validations, acceptances and "
    "activations, and back (docs/esmp.md).",
)
app.add_typer(esmp_app, name="esmp")

console = Console()
err = Console(stderr=True, soft_wrap=True)


@app.callback()
def _setup(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log gateway events (JSON lines) to stderr.")
    ] = False,
) -> None:
    """Logs go to stderr (warnings only unless --verbose), so stdout stays clean for --json."""
    import logging

    from tsodso.gateway.logs import configure_logging

    configure_logging(level=logging.INFO if verbose else logging.WARNING)
    _VERBOSE[0] = verbose


_VERBOSE = [False]


BrokerOpt = Annotated[
    str,
    typer.Option(
        "--broker",
        "-b",
        help="embedded | mosquitto | nats | memory (in-process bus, no broker) | "
        "mqtt[s]://user:pass@host:port[,host2:port2,...][?protocol=3.1.1] (several nodes: a cluster, failover)",
    ),
]


def _bench_broker(broker: str) -> "RunningBroker":
    """The broker a benchmark measures: started here, or one at a URL, which must answer now."""
    from tsodso.broker import start_broker
    from tsodso.broker.launch import BrokerError, answer_problem

    running = start_broker(broker)
    if running.kind == "url" and (problem := answer_problem(running.url)):
        raise BrokerError(f"{broker}: {problem}")
    return running


def _answering_broker(url: str) -> str:
    """Every --broker URL of a tool that works on a broker now (capture, replay, conformance): a URL
    of the right form, at which a broker answers; else one line saying which and why (a --broker
    callback, or called by the command once it knows it needs the broker)."""
    from tsodso.broker.launch import answer_problem

    try:
        problem = answer_problem(url)
    except ValueError as exc:  # not a broker URL
        raise typer.BadParameter(str(exc), param_hint="'--broker'") from None
    if problem:
        raise typer.BadParameter(f"{url}: {problem}", param_hint="'--broker'")
    return url


def _positive(what: str) -> Callable[[float], float]:
    """A callback refusing a value that is not > 0, naming it."""

    def check(value: float) -> float:
        if not value > 0:
            raise typer.BadParameter(f"{value:g} is not > 0 ({what})")
        return value

    return check


def _directory(value: Path | None) -> Path | None:
    """Every --out that is a directory: made now, with its parents, or one line saying why it cannot be."""
    if value is None:
        return value
    if value.exists() and not value.is_dir():
        raise typer.BadParameter(f"{value} is a file, not a directory")
    try:
        value.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot make the directory {value}: {exc.strerror or exc}") from None
    return value


def _file_to_write(value: Path | None) -> Path | None:
    """Every --out that is a file: its directory made now, or one line saying why it cannot be."""
    if value is None:
        return value
    if value.is_dir():
        raise typer.BadParameter(f"{value} is a directory; give a file name")
    _directory(value.parent)
    return value


def _positive_speed(value: float | None) -> float | None:
    """Every --speed: scenario seconds per wall second, > 0."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value:g} is not > 0 (scenario seconds per wall second; 1 = real time)")
    return value


@grid_app.command("show")
def grid_show(
    grid: Annotated[
        str,
        typer.Argument(
            help="A builder (nl_afrr_congestion, rural_village), simbench:<code> or a pandapower JSON file."
        ),
    ],
    table: Annotated[
        list[str] | None, typer.Option("--table", "-t", help="Only these tables (bus, line, trafo, sgen, load...).")
    ] = None,
):
    """The grid's elements by table, as a scenario names them ('trafo:coupling', 'sgen:pv-park'; a
    DN asset's connection_bus is a bus name), with their ratings."""
    from rich.markup import escape
    from rich.table import Table

    from tsodso.actors import grid as grids

    net = grids.build(grid)
    columns = {
        "bus": ["vn_kv"],
        "line": ["from_bus", "to_bus", "length_km", "max_i_ka"],
        "trafo": ["hv_bus", "lv_bus", "sn_mva"],
        "sgen": ["bus", "p_mw"],
        "load": ["bus", "p_mw", "q_mvar"],
        "ext_grid": ["bus"],
    }
    for name in table or list(columns):
        if name not in net or not len(net[name]):
            continue
        console.print(f"{escape(str(net.name or grid))}: {len(net[name])} {name}", highlight=False)
        out = Table()
        out.add_column("scenario name", no_wrap=True)
        for c in columns.get(name, []):
            out.add_column(c, justify="right")
        bus_names = net.bus.name
        for _, row in net[name].iterrows():
            ref = str(row["name"]) if name == "bus" else f"{name}:{row['name']}"
            cells = []
            for c in columns.get(name, []):
                value = row[c]
                cells.append(str(bus_names.at[value]) if c.endswith("bus") else f"{value:g}")
            out.add_row(escape(ref), *map(escape, cells))
        console.print(out)


@schemas_app.command("export")
def schemas_export(
    directory: Annotated[Path, typer.Argument(callback=_directory, help="Where to write the files.")] = Path(
        "contract"
    ),
):
    """Write one JSON Schema per message type (DIR/schemas/), one valid example message per type
    (DIR/examples/), the AsyncAPI 3.0 document and the scenario format's JSON Schema
    (DIR/scenario.schema.json; its page: docs/scenario.md)."""
    from tsodso.gateway.asyncapi import export_asyncapi
    from tsodso.schemas.export import export_examples, export_json_schemas
    from tsodso.testbed.scenario_reference import export_scenario_schema

    paths = export_json_schemas(directory / "schemas")
    export_examples(directory / "examples")
    api = export_asyncapi(directory)
    scenario = export_scenario_schema(directory)
    console.print(f"wrote {len(paths)} JSON Schemas to {directory / 'schemas'}, {api} and {scenario}", highlight=False)


@schemas_app.command("validate")
def schemas_validate(
    file: Annotated[Path, typer.Argument(help="A captured payload (envelope + body), JSON; '-' for stdin.")],
    type_: Annotated[str | None, typer.Option("--type", "-t", help="Expected message type.")] = None,
):
    """Validate a captured message: exit 0, or exit 1 with the field path and what was wrong."""
    from tsodso.schemas.validate import InvalidMessage, validate_message

    try:
        data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    except OSError as exc:
        typer.echo(f"tsodso schemas validate: cannot read {file}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    try:
        env, _ = validate_message(data, type_)
    except InvalidMessage as exc:
        typer.echo(f"invalid {file}: {exc}", err=True)
        raise typer.Exit(1) from None
    console.print(f"valid {env.type} from {env.sender} to {', '.join(map(str, env.recipients))}", highlight=False)


def _stop_on_signal() -> Callable[[], bool]:
    """SIGINT and SIGTERM end a serving command's loop: the returned function says whether one came."""
    stopped: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: stopped.append(signum))
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopped.append(signum))
    return lambda: bool(stopped)


def _serve_until_signal(proc_broker) -> None:
    stopped = _stop_on_signal()
    members = getattr(proc_broker, "members", None) or [proc_broker]
    gone: set[int] = set()
    try:  # a cluster serves on while any node lives (losing one is what it is there to survive)
        while not stopped() and len(gone) < len(members):
            for i, member in enumerate(members):
                if i not in gone and member.proc.poll() is not None:
                    gone.add(i)
                    if len(members) > 1:
                        err.print(f"node {member.host}:{member.port} exited ({member.proc.returncode})")
            time.sleep(0.2)
    finally:
        proc_broker.stop()


@broker_app.command("embedded")
def broker_embedded(
    port: Annotated[int, typer.Option(help="TCP port (0: a free one).")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
):
    """Run the embedded broker (MQTT 3.1.1, pure Python, installed with the project) until Ctrl+C."""
    from tsodso.broker import free_port
    from tsodso.broker.embedded import main
    from tsodso.broker.launch import BrokerError, port_problem

    if port and (problem := port_problem(host, port)):
        raise BrokerError(f"embedded: {problem}")
    main(["--host", host, "--port", str(port or free_port(host))])


@broker_app.command("mosquitto")
def broker_mosquitto(
    port: Annotated[int, typer.Option(help="TCP port (0: a free one).")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    data_dir: Annotated[Path | None, typer.Option(help="Configuration, persistence and log.")] = None,
    secrets: Annotated[
        Path | None,
        typer.Option(
            help="A secrets directory (tsodso secure init): each actor logs in with its own password and "
            "may publish and read only what the rights table gives it."
        ),
    ] = None,
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="With --secrets: mutual TLS, only clients with a certificate of the "
            "deployment's CA get in (the certificate names the actor).",
        ),
    ] = False,
):
    """Run Mosquitto with the project's configuration (MQTT 5, TCP_NODELAY, persistence) until Ctrl+C."""
    from tsodso.broker import start_broker
    from tsodso.broker.acl import auth_lines, tls_auth_lines
    from tsodso.broker.mosquitto import MosquittoMissing

    auth = None
    data_dir = data_dir or Path("runs/mosquitto")
    if tls and secrets is None:
        raise typer.BadParameter("--tls needs --secrets (the deployment's CA and certificates)")
    if secrets is not None:
        try:
            auth = tls_auth_lines(secrets / "mosquitto", secrets / "tls") if tls else auth_lines(secrets / "mosquitto")
        except FileNotFoundError as exc:
            err.print(f"{exc}; write it with: tsodso secure init --scenario SCENARIO --out {secrets}")
            raise typer.Exit(2) from None
    try:
        running = start_broker("mosquitto", port=port or None, host=host, data_dir=data_dir, auth=auth)
    except MosquittoMissing as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    url = running.url.replace("mqtt://", "mqtts://") if tls else running.url
    console.print(
        f"mosquitto listening on {url} (config {data_dir / 'mosquitto.conf'}"
        f"{(', client certificates' if tls else ', per-actor passwords') + ' and access list from ' + str(secrets) if secrets else ', anyone may log in'})",
        highlight=False,
    )
    _serve_until_signal(running)


@broker_app.command("nats")
def broker_nats(
    port: Annotated[int, typer.Option(help="MQTT port (0: a free one).")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    data_dir: Annotated[Path | None, typer.Option(help="Configuration and JetStream store.")] = None,
    secrets: Annotated[
        Path | None,
        typer.Option(
            help="A secrets directory (tsodso secure init): per-actor users and permissions from the rights table."
        ),
    ] = None,
    nodes: Annotated[
        int,
        typer.Option(
            help="Nodes of a local cluster (3 survives the loss of one), on --port, --port + 1, ...: "
            "sessions, retained states and messages in flight kept on 3 nodes."
        ),
    ] = 1,
):
    """Run nats-server with JetStream and its MQTT interface (MQTT 3.1.1) until Ctrl+C; with --nodes N,
    a cluster of N, ready once a message goes through every node (actors connect to any:
    mqtt://host:p1,host:p2,host:p3 fails over to the next node when one is lost)."""
    from tsodso.broker import start_broker
    from tsodso.broker.nats import NatsMissing
    from tsodso.testbed.security import OBSERVER, load_login

    auth = None
    probe_login = None
    if secrets is not None:
        path = secrets / "nats" / "authorization.conf"
        if not path.exists():
            err.print(f"{path} does not exist; write it with: tsodso secure init --scenario SCENARIO --out {secrets}")
            raise typer.Exit(2)
        auth = path.read_text()
        probe_login = load_login(secrets, OBSERVER)
    data_dir = data_dir or Path("runs/nats")
    if nodes > 1:
        console.print(f"starting {nodes} nats-server nodes; waiting until a message goes through each ...")
    try:
        running = start_broker(
            "nats", port=port or None, host=host, data_dir=data_dir, auth=auth, nodes=nodes, probe_login=probe_login
        )
    except NatsMissing as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    where = data_dir / "nats.conf" if nodes == 1 else data_dir / "node*" / "nats.conf"
    console.print(
        f"nats-server (MQTT 3.1.1{f', {nodes} nodes' if nodes > 1 else ''}) listening on {running.url} "
        f"(config {where}{', per-actor users from ' + str(secrets) if secrets else ', anyone may log in'})",
        highlight=False,
    )
    _serve_until_signal(running)


@secure_app.command("init")
def secure_init(
    scenario: Annotated[Path, typer.Option(help="Scenario file (YAML): its actors get an identity each.")],
    out: Annotated[
        Path,
        typer.Option(
            callback=_directory, help="Secrets directory to write (keep it private; give each site its own file)."
        ),
    ] = Path("secrets"),
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="Name or address the broker's certificate is for (repeatable; localhost and 127.0.0.1 always)."
        ),
    ] = None,
):
    """One identity per actor: an Ed25519 signing key, a broker password, a client certificate of the
    deployment's own CA, and the broker's access list."""
    from tsodso.testbed.scenario import load_scenario
    from tsodso.testbed.security import init

    actors = init(out, load_scenario(scenario), hosts=host)
    console.print(
        f"{len(actors)} identities in {out}: public-keys.json (for everyone), one <role>-<id>.secret.json "
        f"per actor (for that actor only), observer.secret.json (read-only), mosquitto/acl and "
        f"mosquitto/passwd (tsodso broker mosquitto --secrets {out}), tls/ (a CA, the broker's and one client "
        f"certificate per actor: add --tls)",
        highlight=False,
    )


@bench_app.command("rtt")
def bench_rtt(
    broker: BrokerOpt = "mosquitto",
    n: Annotated[int, typer.Option("--n", min=1, help="Round trips per path.")] = 2000,
    qos: Annotated[int, typer.Option("--qos", min=0, max=1, help="QoS of request and response.")] = 1,
    signed: Annotated[
        bool, typer.Option("--signed", help="Both gateways sign and check signatures (Ed25519).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Gateway request/response round trip against the raw MQTT client (gmqtt), same run. Goals on
    Mosquitto: p50 <= 0.8 ms and <= 1.5x the raw p50, p99 <= 2 ms."""
    from tsodso.testbed.bench.rtt import run_rtt

    with _bench_broker(broker) as running:
        result = run_batched(run_rtt(running.url, n=n, qos=qos, signed=signed))
    result["broker_kind"] = running.kind
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"request/response round trip, {running.kind} ({result['protocol']}), QoS {qos}, n={n}")
    for col in ("path", "p50 [ms]", "p99 [ms]"):
        table.add_column(col)
    table.add_row(
        "gateway (typed, validated, logged)", f"{result['gateway_p50_ms']:.3f}", f"{result['gateway_p99_ms']:.3f}"
    )
    table.add_row("raw gmqtt", f"{result['raw_p50_ms']:.3f}", f"{result['raw_p99_ms']:.3f}")
    if result["c_p50_ms"] is not None:
        table.add_row("raw libmosquitto (C)", f"{result['c_p50_ms']:.3f}", f"{result['c_p99_ms']:.3f}")
    else:
        table.add_row("raw libmosquitto (C)", "–", result["c_missing"])
    console.print(table)
    goals = (
        ("gateway p50 <= 0.8 ms", result["gateway_p50_ms"] <= 0.8),
        ("p50 <= 1.5x raw", result["ratio_p50"] <= 1.5),
        ("p99 <= 2 ms", result["gateway_p99_ms"] <= 2.0),
    )
    console.print(
        f"ratio_p50 = {result['ratio_p50']}; goals: "
        + ", ".join(f"{g} {'[green]met[/green]' if ok else '[red]not met[/red]'}" for g, ok in goals)
    )


@bench_app.command("throughput")
def bench_throughput(
    broker: BrokerOpt = "mosquitto",
    n: Annotated[int, typer.Option("--n", min=1, help="Messages per measurement.")] = 20_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Messages per second through one gateway, sending and receiving, every check and the exchange log
    on, against the raw MQTT client in the same run. Goals: >= 20 000/s at QoS 0 and >= 10 000/s at QoS 1
    each way, none lost at QoS 1."""
    from tsodso.testbed.bench.throughput import run_throughput

    with _bench_broker(broker) as running:
        result = run_throughput(running.url, n=n)
    result["broker_kind"] = running.kind
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"throughput, {running.kind}, {n} messages, one process each side")
    for col in ("direction", "QoS", "gateway [msg/s]", "raw [msg/s]", "gateway lost", "raw lost"):
        table.add_column(col)
    rows = result["rows"]
    for qos in (0, 1):
        for d in ("send", "receive"):
            g, r = rows[f"{d}_gateway_qos{qos}"], rows[f"{d}_raw_qos{qos}"]
            table.add_row(d, str(qos), f"{g['msg_per_s']:,}", f"{r['msg_per_s']:,}", str(g["lost"]), str(r["lost"]))
    console.print(table)
    console.print(
        "gateway steps [µs/message]: " + ", ".join(f"{k} {v}" for k, v in result["steps_us"].items()),
        highlight=False,
    )
    console.print(
        "goals: "
        + ", ".join(
            f"{k} {'[green]met[/green]' if ok else '[red]not met[/red]'}" for k, ok in result["goals_met"].items()
        )
    )


CoordinationOpt = Annotated[
    str | None,
    typer.Option(
        "--coordination",
        "-c",
        help="a coordination scheme (tso_managed, dso_managed, fragmented, hybrid, "
        "common_market, integrated_market), or on (= hybrid) / off (= tso_managed); "
        "default: the scenario's setting",
    ),
]


VirtualOpt = Annotated[
    bool,
    typer.Option(
        "--virtual",
        help="Virtual time: scenario time advances when every actor has finished its step and every message "
        "is handled; as fast as the actors compute, the same outcome every time (--speed is ignored; link "
        "conditions need paced time).",
    ),
]


def _coordination(value: str | None) -> str | None:
    from tsodso.actors.config import SCHEMES
    from tsodso.actors.coordination import SWITCH

    if value is None:
        return None
    scheme = SWITCH.get(value, value)
    if scheme not in SCHEMES:
        raise typer.BadParameter(f"--coordination is one of {', '.join(SCHEMES)}, on or off")
    return scheme


async def _progress(clock, scenario) -> None:
    """A run's progress in scenario time: a bar on a terminal, else a line every 10 s (wall)."""
    total = (scenario.end - scenario.start).total_seconds()

    def position() -> tuple[float, str]:
        now = clock.now()
        done = min(total, max(0.0, (now - scenario.start).total_seconds()))
        return done, f"{now:%H:%M:%S}" if now >= scenario.start else "connecting"

    if not err.is_terminal:
        while True:
            await asyncio.sleep(10.0)
            done, now = position()
            err.print(
                f"{scenario.name}: scenario time {now} of {scenario.end:%H:%M:%S} ({100 * done / total:.0f} %)",
                highlight=False,
            )
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[now]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(scenario.name, total=total, now="")
        while True:
            done, now = position()
            bar.update(task, completed=done, now=now)
            await asyncio.sleep(0.2)


def _run(
    scenario_file: Path,
    coordination: str | None,
    speed: float,
    broker: str,
    out: Path,
    links: Sequence[str] = (),
    virtual: bool = False,
    iec104: Sequence[str] = (),
    bids: Sequence[Path] = (),
) -> dict:
    from tsodso.actors.config import LinkConfig
    from tsodso.broker import start_broker
    from tsodso.testbed.runner import run_scenario
    from tsodso.testbed.scenario import load_scenario

    scenario = load_scenario(scenario_file, coordination=coordination)
    for spec in links:
        pattern, _, params = spec.rpartition(":") if "=" in spec.rpartition(":")[2] else (spec, "", "")
        values = dict(kv.split("=", 1) for kv in params.split(",") if kv)
        scenario.links.append(LinkConfig.model_validate({"between": pattern, **values}))
    for spec in iec104:
        _bridge_bsp(scenario, spec)
    for document in bids:
        scenario = _document_bids(scenario, document)
    import shutil

    shutil.rmtree(out / "broker", ignore_errors=True)  # a fresh broker per run: no retained state of the last one
    with start_broker(broker, data_dir=out / "broker") as running:
        return run_batched(run_scenario(scenario, running.url, out, speed=speed, virtual=virtual, progress=_progress))


def _document_bids(scenario, path: Path):
    """``--bids FILE``: the bids of an ENTSO-E ReserveBid_MarketDocument replace its sending BSP's bids
    in the scenario (offered for every ISP of the run, as a scenario's bids are)."""
    from pydantic import ValidationError

    from tsodso.schemas.esmp import Coding, DocumentError
    from tsodso.testbed.esmp import import_file, scenario_bids
    from tsodso.testbed.scenario import ScenarioError

    try:
        document, _ = import_file(path, Coding())
    except DocumentError as exc:
        raise ScenarioError(f"--bids {path}: {exc}") from None
    bids = scenario_bids(document.bodies)
    if not bids:
        raise ScenarioError(f"--bids {path}: a {document.kind}, not a ReserveBid_MarketDocument")
    bsp_id = document.sender.id
    data = scenario.model_dump(mode="json")
    bsp = next((b for b in data["bsps"] if b["id"] == bsp_id), None)
    if bsp is None:
        raise ScenarioError(
            f"--bids {path}: its sender {bsp_id!r} is not a BSP of the scenario ({', '.join(b['id'] for b in data['bsps'])}); "
            "map its codes to the scenario's ids: tsodso esmp import FILE --codes CODES --scenario-bids"
        )
    bsp["bids"] = bids
    try:
        return type(scenario).model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ScenarioError(f"--bids {path}: the scenario refuses its bids: {where}: {first['msg']}") from None


def _site_address(spec: str, option: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter(f"{option}: give host:port, e.g. 127.0.0.1:2404")
    return host, int(port)


def _bridge_bsp(scenario, spec: str) -> None:
    """``--iec104 BSP[=HOST:PORT]``: the scenario's BSP behind the IEC 104 bridge, its site at HOST:PORT
    (default: its scenario's iec104 site, else 127.0.0.1:2404)."""
    from tsodso.actors.config import Iec104Site

    bsp_id, _, address = spec.partition("=")
    bsps = {b.id: b for b in scenario.bsps}
    if bsp_id not in bsps:
        raise typer.BadParameter(f"--iec104 {spec!r}: {bsp_id!r} is not a BSP of the scenario ({', '.join(bsps)})")
    bsp = bsps[bsp_id]
    site = bsp.iec104 or Iec104Site()
    if address:
        host, port = _site_address(address, f"--iec104 {spec!r}")
        site = site.model_copy(update={"host": host, "port": port})
    bsp.iec104 = site


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (YAML).")],
    coordination: CoordinationOpt = None,
    speed: Annotated[float, typer.Option(callback=_positive_speed, help="Scenario seconds per wall second.")] = 50.0,
    realtime: Annotated[bool, typer.Option("--realtime", help="Same as --speed 1.")] = False,
    virtual: VirtualOpt = False,
    broker: BrokerOpt = "embedded",
    out: Annotated[Path, typer.Option(callback=_directory, help="Run directory.")] = Path("runs/latest"),
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
    link: Annotated[
        list[str] | None,
        typer.Option(
            help="Link condition 'PATTERN:key=value,...', e.g. 'tso/*->dso/*:delay_ms=3000,drop_probability=0.1'"
            " (keys of a scenario's links entry; repeatable)."
        ),
    ] = None,
    iec104: Annotated[
        list[str] | None,
        typer.Option(
            help="'BSP[=HOST:PORT]': that BSP's fleet is a site on IEC 60870-5-104 (tsodso emulate iec104-site), "
            "bridged; default: the scenario's iec104 site, else 127.0.0.1:2404 (repeatable; docs/iec104.md)."
        ),
    ] = None,
    bids: Annotated[
        list[Path] | None,
        typer.Option(
            "--bids",
            help="An ENTSO-E ReserveBid_MarketDocument (e.g. a market party's export): its bids replace its "
            "sender BSP's bids in the scenario (repeatable; docs/esmp.md).",
        ),
    ] = None,
):
    """Run a scenario with every actor in this process; write the run directory."""
    summary = _run(
        scenario,
        _coordination(coordination),
        1.0 if realtime else speed,
        broker,
        out,
        link or [],
        virtual=virtual,
        iec104=iec104 or [],
        bids=bids or [],
    )
    from tsodso.testbed.report import build_report

    build_report([out])
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_outcomes([summary], console)
    console.print(f"run directory: {out} (report: {out / 'report.html'})", highlight=False)


@app.command()
def up(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (YAML).")],
    coordination: CoordinationOpt = None,
    speed: Annotated[float, typer.Option(callback=_positive_speed, help="Scenario seconds per wall second.")] = 25.0,
    tls: Annotated[bool, typer.Option("--tls", help="Mutual TLS: only the deployment's certificates get in.")] = False,
    out: Annotated[
        Path,
        typer.Option(callback=_directory, help="Deployment directory: secrets/, broker/, run/, one log per actor."),
    ] = Path("runs/secure"),
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json.")] = False,
    lab: Annotated[
        bool,
        typer.Option(
            "--lab",
            help="Every actor on its own host of the network lab, the broker on another, with the scenario's "
            "rate limits, delays and partitions on their links (Linux, root; the scenario's 'lab').",
        ),
    ] = False,
):
    """The secured deployment in one command: identities, Mosquitto with the access list (and mutual
    TLS), every actor in its own process signing and checking; prints the outcome."""
    from tsodso.broker.mosquitto import MosquittoMissing
    from tsodso.testbed.deploy import DeployError
    from tsodso.testbed.deploy import up as deploy
    from tsodso.testbed.lab import LabError

    try:
        summary = deploy(scenario, out, speed=speed, tls=tls, coordination=_coordination(coordination), lab=lab)
    except (DeployError, MosquittoMissing, LabError) as exc:
        err.print(f"tsodso up: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    _print_outcomes([summary], console)
    console.print(f"run directory: {out / 'run'}; secrets (reused next time): {out / 'secrets'}", highlight=False)


lab_app = typer.Typer(
    rich_markup_mode=None,
    no_args_is_help=True,
    help="The network lab: each actor on its own host (a network namespace), real TCP between them (root).",
)
app.add_typer(lab_app, name="lab")


@lab_app.command("up")
def lab_up(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (YAML): its actors and its 'lab' section.")],
):
    """Build the lab of a scenario and leave it up: one host per actor and one for the broker, the
    scenario's rate limits and delays on their links; prints how to run each on its host.
    (Partitions are played by 'tsodso up SCENARIO --lab', which follows the run's clock.)"""
    from tsodso.testbed.lab import BRIDGE, Lab, LabError
    from tsodso.testbed.scenario import load_scenario

    network = Lab(load_scenario(scenario))
    try:
        network.up(keep=True)
    except LabError as exc:
        err.print(f"tsodso lab up: {exc}", highlight=False)
        raise typer.Exit(1) from None
    for note in network.notes:
        err.print(f"note: {note}", highlight=False)
    broker = network.hosts[network.scenario.lab.broker_hosts[0]]
    console.print(f"lab up: switch {BRIDGE}, {len(network.hosts)} hosts; netem: {network.netem}", highlight=False)
    for host in network.hosts.values():
        shaped = host.link.model_dump(exclude_defaults=True, exclude={"partitions"})
        console.print(
            f"  {host.name:<16} {host.ip:<15} ip netns exec {host.netns} ...  {shaped or ''}", highlight=False
        )
    actor_host = next(n for n in network.hosts if "/" in n)
    console.print(
        f"run: ip netns exec {broker.netns} tsodso broker mosquitto --host {broker.ip} --port 1883\n"
        f"     ip netns exec {network.hosts[actor_host].netns} tsodso actor ... "
        f"--broker mqtt://{broker.ip}:1883\ndown: tsodso lab down",
        highlight=False,
    )


@lab_app.command("down")
def lab_down():
    """Take the lab down (every tsl-* host and the switch), also one a crashed run left behind."""
    from tsodso.testbed.lab import Lab, LabError

    try:
        Lab.check()
    except LabError as exc:
        err.print(f"tsodso lab down: {exc}", highlight=False)
        raise typer.Exit(1) from None
    Lab.down()
    console.print("lab down")


@app.command()
def actor(
    role: Annotated[str, typer.Argument(help="tso | dso | bsp | mo (the market operator of the integrated market)")],
    actor_id: Annotated[str, typer.Option("--id", help="The actor's id in the scenario.")],
    scenario: Annotated[Path, typer.Option(help="Scenario file (YAML).")],
    broker: Annotated[str, typer.Option(help="mqtt[s]://user:pass@host:port[?protocol=3.1.1]")],
    coordination: CoordinationOpt = None,
    speed: Annotated[
        float,
        typer.Option(callback=_positive_speed, help="Scenario seconds per wall second (the same for every actor)."),
    ] = 50.0,
    out: Annotated[Path, typer.Option(callback=_directory, help="Run directory shared by the actors.")] = Path(
        "runs/actors"
    ),
    secrets: Annotated[
        Path | None,
        typer.Option(
            help="Secrets directory (tsodso secure init): this actor's key and broker password, everyone's "
            "public keys. Required unless --insecure."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Run open: no signatures, no own login; anyone on the broker may speak as anyone."
        ),
    ] = False,
):
    """Run one actor in this process on any broker; the TSO starts the run when all are online."""
    from tsodso.gateway.client import GatewayFailed
    from tsodso.testbed.scenario import actor_in, load_scenario
    from tsodso.testbed.security import SecretsError
    from tsodso.testbed.standalone import RunNotStarted, run_actor

    if role not in ("tso", "dso", "bsp", "mo"):
        raise typer.BadParameter("role is tso, dso, bsp or mo")
    if secrets is None and not insecure:
        err.print(
            "tsodso actor: give --secrets DIR (write it once with: tsodso secure init --scenario "
            f"{scenario} --out secrets), or --insecure to run without identities"
        )
        raise typer.Exit(2)
    # a DSO checks the scenario against its grids; the others need no grid (a SimBench one takes seconds)
    loaded = load_scenario(scenario, coordination=_coordination(coordination), grids=role == "dso")
    actor_in(loaded, role, actor_id, scenario)
    try:
        run_batched(run_actor(role, actor_id, loaded, broker, out, speed=speed, secrets=secrets))
    except (SecretsError, GatewayFailed, RunNotStarted) as exc:
        err.print(f"tsodso actor {role}/{actor_id}: {exc}", highlight=False, markup=False)
        raise typer.Exit(1) from None
    if role == "tso":
        console.print(f"summary: {out / 'summary.json'}", highlight=False)


def _print_outcomes(runs: list[dict], to: Console) -> None:
    """The runs' outcomes side by side, read through the summary's model (``testbed.results``)."""
    from rich.table import Table

    from tsodso.actors import rules
    from tsodso.testbed.results import RunSummary

    summaries = [RunSummary.model_validate(r) for r in runs]

    table = Table(title=f"{summaries[0].scenario}: outcomes")
    table.add_column("")
    for s in summaries:
        table.add_column(f"{s.coordination}", justify="right")

    from rich.markup import escape

    from tsodso.testbed.summary import setpoints_text

    def row(label: str, fn: Callable[[RunSummary], str]) -> None:
        table.add_row(escape(label), *[escape(fn(s)) for s in summaries])

    row("DSO limits [MW]", lambda s: ", ".join(f"{b} {v:.2f}" for b, v in s.dso_limits_mw.items()) or "none")
    row(
        "limiting element",
        lambda s: next(
            (v.get("limiting_element") or "" for v in s.validations.values() if v.get("limiting_element")), "-"
        ),
    )
    row("largest delta setpoint [MW]", lambda s: ", ".join(f"{v:.2f}" for v in s.max_delta_setpoint_mw.values()))
    row("max line loading [%]", lambda s: f"{s.max_line_loading_percent:.1f} ({s.max_loading_element})")
    row("congestion [s]", lambda s: f"{s.congestion_seconds:.0f}")
    row("activated energy [MWh]", lambda s: f"{s.activated_energy_mwh:.3f}")
    row("setpoints sent / missed", setpoints_text)
    low, high = (100 * x for x in rules.DELIVERY_BAND)
    row(f"delivery within [{low:+.0f} %, {high:+.0f} %]", lambda s: f"{s.delivery_within_tolerance_ratio}")
    row(
        "MOL -> validation p50 / p99 [ms]",
        lambda s: (
            (f"{s.mol_validation_round_trip_ms.p50} / {s.mol_validation_round_trip_ms.p99}")
            if s.mol_validation_round_trip_ms.count
            else "-"
        ),
    )
    row(
        "delta_setpoint latency p50 / p99 [ms]",
        lambda s: (
            f"{s.latency_ms['delta_setpoint'].p50} / {s.latency_ms['delta_setpoint'].p99}"
            if "delta_setpoint" in s.latency_ms
            else "-"
        ),
    )

    def bridged(bsp_id: str) -> Callable[[RunSummary], str]:
        def text(s: RunSummary) -> str:
            bridge = (s.bridges or {}).get(bsp_id)
            if bridge is None:
                return "-"
            return f"{bridge.confirmed.p50} / {bridge.confirmed.p99}" + (
                f", {bridge.not_taken} not taken" if bridge.not_taken else ""
            )

        return text

    for bsp_id in sorted({b for s in summaries for b in s.bridges or {}}):
        row(f"{bsp_id} IEC 104 confirmed p50 / p99 [ms]", bridged(bsp_id))
    row("total activation cost [EUR]", lambda s: f"{s.schemes.total_cost_eur:.2f}")
    row("balancing need covered [%]", lambda s: f"{s.schemes.balancing_covered_percent:.1f}")
    row(
        "DER energy TSO / DSOs [MWh]",
        lambda s: f"{s.schemes.der_mwh_tso:.2f} / {s.schemes.der_mwh_dso:.2f}",
    )
    row("messages", lambda s: str(sum(s.messages.values())))
    row("wall clock [s]", lambda s: f"{s.wall_clock_s or 0:.1f}")
    to.print(table)
    for s in summaries:
        for note in s.notes:
            to.print(f"note ({s.coordination}): {note}", highlight=False, markup=False)


def _bench_table(result: dict, extra: list[tuple[str, str]]) -> None:
    """Every benchmark's terminal output: value against goal, the same-run baseline, details."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"bench {result['benchmark']}")
    table.add_column("")
    table.add_column("", justify="right")
    rows = [(result["metric"], f"{result['value']} {result['unit']}"), ("goal", result["goal"])]
    if "baseline" in result:
        rows += [
            (f"baseline: {result['baseline']}", f"{result['baseline_value']} {result['unit']}"),
            ("ratio (value / baseline)", str(result["ratio"])),
        ]
    rows += extra
    for label, value in rows:
        table.add_row(escape(label), escape(str(value)))
    console.print(table)


@bench_app.command("mol")
def bench_mol(
    bids: Annotated[int, typer.Option("--bids", min=1, help="Bids in the merit order list.")] = 1000,
    grid: Annotated[str, typer.Option("--grid", help="Grid name or simbench:<code>.")] = "simbench:1-MV-semiurb--0-sw",
    baseline_bids: Annotated[int, typer.Option(min=1, help="Bids for the pp.runpp baseline (scaled).")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """DSO validation time of an N-bid MOL, against per-bid pp.runpp. Goal: <= 150 ms for 1000 bids."""
    from tsodso.testbed.bench.mol import run_mol

    result = run_mol(grid, bids, baseline_bids)
    if as_json:
        print(json.dumps(result))
        return
    _bench_table(
        result,
        [
            ("grid", f"{grid} ({result['buses']} buses)"),
            ("verdicts", str(result["verdicts"])),
            ("runs [ms]", str(result["validation_ms_runs"])),
            (
                "real-time check p50 / p99 [ms]",
                f"{result['realtime_check_ms_p50']} / {result['realtime_check_ms_p99']}",
            ),
            ("engine vs pp.runpp, max loading difference [%]", str(result["engine_vs_runpp_max_loading_diff_percent"])),
        ],
    )


@bench_app.command("fanout")
def bench_fanout(
    endpoints: Annotated[
        int, typer.Option("--endpoints", min=1, help="BSP endpoints, each its own MQTT connection.")
    ] = 1000,
    broker: BrokerOpt = "mosquitto",
    cycles: Annotated[int, typer.Option(min=1, help="Setpoint cycles per path.")] = 5,
    period: Annotated[
        float,
        typer.Option(
            callback=_positive("the cycle length in seconds"),
            help="Cycle length [s] (4 s in real time; shorter = accelerated).",
        ),
    ] = 4.0,
    workers: Annotated[int, typer.Option(min=1, help="Processes hosting the endpoints.")] = 2,
    senders: Annotated[
        int, typer.Option(min=1, max=16, help="Processes the TSO's gateway sends from (each every K-th endpoint).")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """One TSO -> N BSP endpoints every cycle: missed cycles, publish->receive p50/p99 and the last delivery of a
    cycle, gateway vs the raw client (the floor) in the same run. Goal: 0 missed cycles, last delivery <= 1.5x raw."""
    import resource

    from tsodso.testbed.bench.fanout import run_fanout

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the broker and endpoints need a socket each
    with _bench_broker(broker) as running:
        result = run_fanout(running.url, endpoints, cycles, period, workers, senders)
    if as_json:
        print(json.dumps(result))
        return
    _bench_table(
        result,
        [
            (
                f"{path}: p50 / p99 [ms], last delivery of a cycle [ms], missed cycles, missed deliveries",
                f"{result[path]['p50_ms']} / {result[path]['p99_ms']}, {result[path]['last_delivery_ms']}, "
                f"{result[path]['missed_cycles']}/{cycles}, {result[path]['missed_deliveries']}",
            )
            for path in ("gateway", "raw")
        ]
        + [
            ("last delivery, gateway / raw (goal <= 1.5)", str(result["last_delivery_ratio"])),
            ("endpoints connected (s)", f"{result['connected']} ({result['connect_s']} s)"),
            ("the gateway's sender processes", str(result["senders"])),
        ],
    )


@bench_app.command("day")
def bench_day(
    broker: BrokerOpt = "mosquitto",
    speed: Annotated[
        float | None,
        typer.Option(
            callback=_positive_speed,
            help="Pace at this many scenario seconds per wall second (1440: a day in a minute); default: virtual time.",
        ),
    ] = None,
    hours: Annotated[float, typer.Option(callback=_positive("scenario hours"), help="Scenario hours.")] = 24.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """24 h of the reference scenario in virtual time (goal: <= 30 s wall), or paced (goal: <= 60 s)."""
    from tsodso.testbed.bench.day import run_day

    with _bench_broker(broker) as running:
        result = run_day(running.url, speed=speed, hours=hours)
    if as_json:
        print(json.dumps(result))
        return
    _bench_table(
        result,
        [
            ("time", result["time"]),
            ("cycles", f"{result['cycles']} ({result['cycles_per_s']}/s)"),
            ("setpoints sent / missed", f"{result['setpoints_sent']} / {result['setpoints_missed']}"),
            ("late cycles", str(result["late_cycles"])),
            ("delta_setpoint latency [ms]", str(result["delta_setpoint_latency_ms"])),
        ],
    )


@bench_app.command("failover")
def bench_failover(
    runs: Annotated[int, typer.Option(min=1, help="Runs in a row on one cluster, a node killed in each.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """The reference run on a 3-node NATS cluster with the DSO's and the BSP's node killed at 10:01:30
    (goal: both back on another node within 5 s, 0 QoS 1 messages lost, the same outcome, every run starts)."""
    from tsodso.broker.nats import NatsMissing
    from tsodso.testbed.bench.failover import run_failover

    try:
        result = run_failover(runs)
    except NatsMissing as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result))
        return
    rows = [("cluster", result["broker"])]
    for r in result["runs"]:
        back = ", ".join(f"{a} {b['after_ms']:.0f} ms -> {b['node']}" for a, b in r["back"].items())
        rows.append(
            (
                f"run {r['run']} (killed {r['killed_node']})",
                f"back: {back or 'none'}; QoS 1 not arrived {r['qos1_not_arrived']}; setpoints "
                f"{r['setpoints_sent']} sent / {r['setpoints_lost']} lost / {r['setpoints_expired']} expired; "
                f"limit {r['dso_limit_mw']} MW, congestion {r['congestion_s']} s",
            )
        )
    _bench_table(result, rows)


@bench_app.command("lab")
def bench_lab(
    partition_s: Annotated[float, typer.Option(help="[s, wall] how long the DSO's host is cut off.")] = 30.0,
    rate_kbit: Annotated[float, typer.Option(help="[kbit/s] the BSP's link in the rate run.")] = 64.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """The reference run in the network lab (root): the DSO's host partitioned across an MOL validation,
    then the BSP's link rate-limited; what each does to the run and to each link's latency."""
    from tsodso.testbed.bench.lab import run_lab_bench
    from tsodso.testbed.deploy import DeployError
    from tsodso.testbed.lab import LabError

    try:
        result = run_lab_bench(partition_s, rate_kbit)
    except (LabError, DeployError) as exc:
        err.print(f"tsodso bench lab: {exc}", highlight=False)
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps(result))
        return
    p, r = result["partition"], result["rate"]
    rows = [
        ("netem in this kernel", str(result["netem"])),
        ("partition: DSO cut off", p["dso_cut_off"]),
        ("MOL fallbacks", ", ".join(p["mol_fallbacks"]) or "none"),
        ("DSO connection", "; ".join(p["dso_connection"]) or "never lost"),
        (
            "QoS 1 not arrived / setpoints sent, lost, expired",
            f"{p['qos1_not_arrived']} / {p['setpoints_sent_lost_expired']}",
        ),
        ("limit / congestion", f"{p['dso_limit_mw']} MW / {p['congestion_s']} s"),
    ]
    rows += [(f"rate: {k} [ms]", f"p50 {v['p50']}, p99 {v['p99']} ({v['count']})") for k, v in r["latency_ms"].items()]
    _bench_table(result, rows)


@bench_app.command("log")
def bench_log(
    rows: Annotated[int, typer.Option("--rows", min=1, help="Rows to record.")] = 500_000,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Exchange-log rows per second with nothing lost. Goal: >= 50 000 rows/s."""
    from tsodso.testbed.bench.log import run_log

    result = run_log(rows)
    if as_json:
        print(json.dumps(result))
        return
    _bench_table(
        result,
        [
            ("rows written / lost", f"{result['rows_written']} / {result['lost']}"),
            ("record() per row [µs]", str(result["record_us_per_row"])),
        ],
    )


@bench_app.command("hostile")
def bench_hostile(
    broker: BrokerOpt = "embedded",
    rates: Annotated[
        str, typer.Option(help="Comma-separated hostile messages per second, 0 = the clean run.")
    ] = "0,1000,2000,4000",
    speed: Annotated[float, typer.Option(callback=_positive_speed, help="Scenario seconds per wall second.")] = 50.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """The reference scenario under a hostile flood: refused messages/s with the outcome unchanged."""
    from tsodso.testbed.bench.hostile import run_hostile

    try:
        chosen = [float(r) for r in rates.split(",")]
    except ValueError:
        raise typer.BadParameter(f"--rates {rates!r}: comma-separated numbers, e.g. 0,1000,2000") from None
    with _bench_broker(broker) as running:
        result = run_hostile(running.url, chosen, speed=speed)
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"reference scenario under a hostile flood, {running.kind} broker, {speed:g}x")
    cols = (
        "rate (1/s)",
        "sent (1/s)",
        "refused",
        "as clean run",
        "limit (MW)",
        "congestion (s)",
        "lost / expired",
        "setpoint p99 (ms)",
        "loop stall (ms)",
    )
    for col in cols:
        table.add_column(col, justify="right")
    for r in result["rows"]:
        table.add_row(
            f"{r['rate_per_s']:g}",
            str(r["sent_per_s"]),
            str(r["refused"]),
            "yes" if r["outcome_as_clean_run"] else "NO",
            str(r["dso_limit_mw"]),
            str(r["congestion_s"]),
            f"{r['setpoints_lost']} / {r['setpoints_expired']}",
            str(r["setpoint_latency_p99_ms"]),
            str(r["loop_stall_max_ms"]),
        )
    console.print(table)


@app.command()
def hostile(
    broker: Annotated[str, typer.Option(help="mqtt[s]://user:pass@host:port[?protocol=3.1.1] (a broker of your own)")],
    targets: Annotated[
        str, typer.Option(help="Comma-separated role/id the messages are addressed to.")
    ] = "tso/tso,dso/dso1,bsp/bsp1",
    rate: Annotated[float, typer.Option(help="Messages per second.")] = 1000.0,
    duration: Annotated[float, typer.Option(help="[s] how long.")] = 20.0,
):
    """Play a hostile peer: malformed, oversized, forged and replayed messages at a rate (testbed.hostile)."""
    from tsodso.schemas.envelope import Party
    from tsodso.testbed.hostile import flood

    try:
        parties = [Party.of(*t.split("/", 1)) for t in targets.split(",")]
    except (IndexError, ValueError):
        raise typer.BadParameter(f"--targets {targets!r}: comma-separated role/id, e.g. tso/tso,bsp/bsp1") from None
    try:
        sent = run_batched(flood(broker, parties, rate=rate, duration_s=duration))
    except (OSError, TimeoutError, ValueError) as exc:
        err.print(f"tsodso hostile: {broker}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    console.print(
        f"sent {sum(sent.values())} hostile messages: " + ", ".join(f"{k} {v}" for k, v in sorted(sent.items())),
        highlight=False,
    )


@app.command()
def demo(
    broker: BrokerOpt = "embedded",
    speed: Annotated[float, typer.Option(callback=_positive_speed, help="Scenario seconds per wall second.")] = 50.0,
    out: Annotated[Path, typer.Option(callback=_directory, help="Where the two runs go.")] = Path("runs/demo"),
    scenario: Annotated[
        Path, typer.Option(help="Scenario file (default: the shipped reference scenario).", show_default=False)
    ] = REFERENCE_SCENARIO,
):
    """The reference scenario (CS review §IV.B) with coordination on and off, side by side."""
    summaries = []
    from tsodso.actors.coordination import SWITCH

    for label in ("on", "off"):
        coordination = SWITCH[label]
        console.print(
            f"running {scenario} with coordination {label} ({coordination}) on the {broker} broker ...", highlight=False
        )
        summaries.append(_run(scenario, coordination, speed, broker, out / f"coordination-{label}"))
    _print_outcomes(summaries, console)
    from tsodso.testbed.report import build_report

    report = build_report([out / "coordination-on", out / "coordination-off"], out)
    console.print(f"run directories: {out}/coordination-on, {out}/coordination-off; report: {report}", highlight=False)


@app.command()
def compare(
    scenario: Annotated[
        Path,
        typer.Argument(help="Scenario file (YAML; default: the shipped scheme comparison).", show_default=False),
    ] = COMPARISON_SCENARIO,
    schemes: Annotated[str, typer.Option(help="'all' or a comma-separated list of schemes.")] = "all",
    out: Annotated[Path, typer.Option(callback=_directory, help="Where the runs and the comparison go.")] = Path(
        "runs/compare"
    ),
    broker: BrokerOpt = "embedded",
    speed: Annotated[float, typer.Option(callback=_positive_speed, help="Scenario seconds per wall second.")] = 50.0,
    virtual: VirtualOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print comparison.json.")] = False,
):
    """Run the scenario under each TSO-DSO coordination scheme (CS review Table I) and compare them."""
    from tsodso.actors.config import SCHEMES
    from tsodso.testbed.compare import compare as run_compare
    from tsodso.testbed.compare import table_markdown
    from tsodso.testbed.scenario import load_scenario

    chosen = list(SCHEMES) if schemes == "all" else [s.strip() for s in schemes.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCHEMES]
    if unknown:
        raise typer.BadParameter(f"unknown scheme {', '.join(unknown)}; known: {', '.join(SCHEMES)}")
    loaded = load_scenario(scenario)
    result = run_batched(
        run_compare(
            loaded,
            broker,
            out,
            schemes=chosen,
            speed=speed,
            virtual=virtual,
            progress=lambda s: err.print(
                f"[{chosen.index(s) + 1}/{len(chosen)}] {loaded.name} as {s} on the {broker} broker ...",
                highlight=False,
            ),
            run_progress=_progress,
            finished=lambda s, row, wall: err.print(
                f"[{chosen.index(s) + 1}/{len(chosen)}] {s}: done in {wall:.1f} s; cost {row['total_cost_eur']:.2f} EUR, "
                f"congestion {row['congestion_seconds']:.0f} s, balancing covered {row['balancing_covered_percent']:.1f} %",
                highlight=False,
            ),
        )
    )
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(table_markdown(result["schemes"]), highlight=False, markup=False, soft_wrap=True)
    console.print(
        f"comparison: {out / 'comparison.json'}, {out / 'comparison.md'}, {out / 'comparison.html'}", highlight=False
    )


@app.command()
def report(
    runs: Annotated[list[Path], typer.Argument(help="One run directory, or two to compare (e.g. on and off).")],
    out: Annotated[
        Path | None,
        typer.Option(callback=_directory, help="Where report.html and the PNGs go (default: the first run)."),
    ] = None,
):
    """Build report.html (self-contained, plots embedded) and PNGs from run directories alone."""
    from tsodso.testbed.report import build_report

    for run in runs:
        if not (run / "summary.json").is_file():
            err.print(
                f"tsodso report: {run} is not a run directory (no summary.json in it); give the --out of a "
                "'tsodso run', 'demo', 'compare' or 'up'",
                highlight=False,
                markup=False,
            )
            raise typer.Exit(2)
    path = build_report(runs, out)
    console.print(f"report: {path}", highlight=False)


@app.command()
def exchange(
    broker: BrokerOpt = "embedded",
    out: Annotated[Path, typer.Option(callback=_directory, help="Run directory.")] = Path("runs/exchange"),
):
    """A small TSO-DSO-BSP exchange over a real broker; prints what crossed the bus with latencies."""
    from tsodso.broker import start_broker
    from tsodso.gateway import ExchangeLog
    from tsodso.gateway.logs import configure_logging
    from tsodso.testbed.demo import exchange as small_exchange
    from tsodso.testbed.demo import print_exchange

    out.mkdir(parents=True, exist_ok=True)
    db = out / "exchange.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    configure_logging(out / "events.jsonl")
    with start_broker(broker, data_dir=out / "broker") as running:
        console.print(f"broker: {running.kind} at {running.url}", highlight=False)
        with ExchangeLog(db, run_id="exchange") as log:
            run_batched(small_exchange(running.url, log))
    print_exchange(db, console)


ScenarioOpt = Annotated[
    Path,
    typer.Option(
        help="Scenario whose TSO the suite plays (its id, area and setpoint period); for a DSO device also the "
        "assets and bids in its grid. A BSP's own assets and bids come from its messages.",
        show_default=False,
    ),
]


@app.command()
def conformance(
    role: Annotated[str | None, typer.Option(help="Role of the device under test: bsp | dso | tso | mo.")] = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="The device's id on the bus.")] = None,
    broker: Annotated[
        str, typer.Option(help="mqtt[s]://user:pass@host:port[?protocol=3.1.1] the device is on.")
    ] = "mqtt://127.0.0.1:1883",
    observer: Annotated[
        str | None,
        typer.Option(
            help="Broker URL with an account that may read tsodso/v1/# "
            "(brokers with access lists), for watching the device."
        ),
    ] = None,
    rules: Annotated[str, typer.Option(help="Only rule IDs matching this pattern, e.g. 'BSP-SP-*'.")] = "*",
    report: Annotated[Path | None, typer.Option(help="Write conformance.json and conformance.html here.")] = None,
    scenario: ScenarioOpt = REFERENCE_SCENARIO,
    speed: Annotated[
        float,
        typer.Option(
            callback=_positive_speed,
            help="Scenario seconds per wall second (1 for real devices; emulators step per setpoint and can go faster).",
        ),
    ] = 1.0,
    timeout: Annotated[float, typer.Option(help="[s] wait for each thing the device must do unprompted.")] = 20.0,
    wait_offline: Annotated[
        float,
        typer.Option(
            help="[s] after the script, wait this long for the device to go "
            "(stop or unplug it) to judge its 'offline' state (PR-020)."
        ),
    ] = 0.0,
    public_keys: Annotated[
        Path | None,
        typer.Option(
            "--public-keys", help="public-keys.json (tsodso secure init): verify the device's signatures (EN-060)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print conformance.json.")] = False,
    doc: Annotated[bool, typer.Option("--doc", help="Print the rules as docs/conformance.md and exit.")] = False,
):
    """Test a device against the contract, rule by rule: the testbed plays the other roles over the
    broker. Exit 1 when a rule fails (docs/conformance.md lists the rules)."""
    if doc:
        from tsodso.testbed.conformance.rules import markdown

        print(markdown(), end="")
        return
    if role is None or device_id is None:
        raise typer.BadParameter("--role and --device-id are required (or --doc)")
    _answering_broker(broker)
    if not _VERBOSE[0]:  # the suite provokes refusals on purpose (an expired setpoint): its verdicts say the rest
        import logging

        from tsodso.gateway.logs import configure_logging

        configure_logging(level=logging.ERROR)
    from tsodso.testbed.conformance import run_suite
    from tsodso.testbed.scenario import load_scenario

    device_key = None
    if public_keys is not None:
        from tsodso.schemas.signing import load_public_keys

        try:
            device_key = load_public_keys(public_keys).get(f"{role}/{device_id}")
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"--public-keys: {exc}") from None
        if device_key is None:
            raise typer.BadParameter(f"--public-keys {public_keys} has no key for {role}/{device_id}")
    try:

        def ask() -> None:
            err.print(f"script done: stop or disconnect {role}/{device_id} now (waiting {wait_offline:g} s)")

        async def session():
            err.print(
                f"conformance: playing the peers of {role}/{device_id} on {broker} at {speed:g}x "
                f"(up to {timeout:g} s for each thing it must do unprompted); a line every 15 s until the verdicts",
                highlight=False,
                markup=False,
            )
            t0 = time.monotonic()

            async def alive() -> None:
                while True:
                    await asyncio.sleep(15.0)
                    err.print(f"conformance: session running, {time.monotonic() - t0:.0f} s", highlight=False)

            ticker = asyncio.create_task(alive())
            try:
                return await run_suite(
                    role,
                    device_id,
                    broker,
                    load_scenario(scenario),
                    rules=rules,
                    speed=speed,
                    timeout_s=timeout,
                    report_dir=report,
                    observer=observer,
                    leave=(wait_offline, ask) if wait_offline > 0 else None,
                    device_key=device_key,
                )
            finally:
                ticker.cancel()

        result = run_batched(session())
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        style = {"pass": "green", "fail": "bold red", "skip": "yellow"}
        for r in result.results:
            line = f"[{style[r.status]}]{r.status.upper():4}[/] {r.id}  {r.evidence}"
            if r.status == "fail" and r.bound:
                line += f"  (measured {r.value}, bound {r.bound})"
            console.print(line, highlight=False, soft_wrap=True)
        if result.aborted:
            console.print(f"[bold red]session stopped early:[/] {result.aborted}", highlight=False, soft_wrap=True)
        c = result.counts
        console.print(
            f"{role}/{device_id}: {c['pass']} passed, {c['fail']} failed, {c['skip']} skipped in "
            f"{result.duration_s:.1f} s" + (f"; report: {report / 'conformance.html'}" if report else ""),
            highlight=False,
            soft_wrap=True,
        )
    if not result.passed:
        raise typer.Exit(1)


@app.command()
def emulate(
    role: Annotated[str | None, typer.Argument(help="bsp | dso | tso | mo | iec104-site")] = None,
    device_id: Annotated[str | None, typer.Option("--device-id", help="The device's id on the bus.")] = None,
    broker: Annotated[
        str, typer.Option(help="mqtt[s]://user:pass@host:port[?protocol=3.1.1]")
    ] = "mqtt://127.0.0.1:1883",
    fault: Annotated[str | None, typer.Option(help="Break rules on purpose (tsodso emulate --list-faults).")] = None,
    scenario: ScenarioOpt = REFERENCE_SCENARIO,
    speed: Annotated[float, typer.Option(callback=_positive_speed, help="Must match the suite's --speed.")] = 1.0,
    list_faults: Annotated[
        bool, typer.Option("--list-faults", help="Print the fault modes and the rules they break.")
    ] = False,
    public_key_out: Annotated[
        Path | None,
        typer.Option(
            help="Write the device's public key here (public-keys.json form), for tsodso conformance --public-keys."
        ),
    ] = None,
    site_port: Annotated[
        int | None, typer.Option("--port", help="iec104-site: the port to serve (default: the scenario's, or 2404).")
    ] = None,
):
    """A reference BSP, DSO, TSO or market-operator device that passes its conformance suite (or breaks it
    with --fault). It signs what it sends with a key made for this run. 'iec104-site' is a BSP's site on
    IEC 60870-5-104 instead, for 'tsodso bridge iec104' (--device-id: the scenario's BSP whose fleet it is)."""
    from tsodso.testbed.emulate import FAULTS
    from tsodso.testbed.emulate import emulate as run_emulator
    from tsodso.testbed.iec104_site import SITE_FAULTS
    from tsodso.testbed.scenario import load_scenario

    if list_faults:
        for r, faults in {**FAULTS, "iec104-site": SITE_FAULTS}.items():
            for name, (what, breaks) in faults.items():
                console.print(
                    f"{r} --fault {name}: {what} (fails {', '.join(sorted(breaks))})", highlight=False, soft_wrap=True
                )
        return
    if role == "iec104-site":
        _emulate_site(load_scenario(scenario), device_id, fault, speed, site_port)
        return
    if role not in FAULTS or device_id is None:
        raise typer.BadParameter(f"give a role ({', '.join(FAULTS)}) and --device-id (or --list-faults)")
    if fault is not None and fault not in FAULTS[role]:
        raise typer.BadParameter(f"{role} faults: {', '.join(FAULTS[role])}")
    from tsodso.schemas import signing

    key = signing.generate([f"{role}/{device_id}"])
    if public_key_out is not None:
        public_key_out.write_text(signing.public_keys_json(signing.public_keys(key)))

    def ready() -> None:
        waits = "its DSOs and BSPs" if role == "tso" else "a session"
        err.print(
            f"{role}/{device_id} on {broker}" + (f", fault {fault}" if fault else "") + f": waiting for {waits} "
            "(tsodso conformance ...); Ctrl-C stops",
            highlight=False,
        )

    run_batched(
        run_emulator(
            role,
            device_id,
            broker,
            load_scenario(scenario),
            fault=fault,
            speed=speed,
            signing_key=key[f"{role}/{device_id}"],
            ready=ready,
        )
    )


def _site_of(scenario, device_id: str | None):
    """The scenario's BSP ``device_id`` (default: its first) and its IEC 104 site (default: the defaults)."""
    from tsodso.actors.config import Iec104Site

    bsps = {b.id: b for b in scenario.bsps}
    if device_id is not None and device_id not in bsps:
        raise typer.BadParameter(
            f"--device-id {device_id!r} is not a BSP of the scenario (its BSPs: {', '.join(bsps)})"
        )
    bsp = bsps[device_id] if device_id else scenario.bsps[0]
    return bsp, bsp.iec104 or Iec104Site()


def _emulate_site(scenario, device_id: str | None, fault: str | None, speed: float, port: int | None) -> None:
    from tsodso.testbed.iec104_site import SITE_FAULTS, SiteEmulator

    if fault is not None and fault not in SITE_FAULTS:
        raise typer.BadParameter(f"iec104-site faults: {', '.join(SITE_FAULTS)}")
    bsp, site = _site_of(scenario, device_id)
    emulator = SiteEmulator(
        bsp, site, port=port, fault=fault, setpoint_period_s=scenario.setpoint_period_s, speed=speed
    )
    try:
        emulator.start()
    except OSError as exc:
        err.print(f"tsodso: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    err.print(
        f"iec104-site of {bsp.id} on {emulator.station.where} (common address {site.common_address}"
        f"{', fault ' + fault if fault else ''}): waiting for its bridge (tsodso bridge iec104 ...); Ctrl-C stops",
        highlight=False,
    )
    stopped = _stop_on_signal()
    try:
        while not stopped():
            time.sleep(0.1)
    finally:
        emulator.stop()


@bridge_app.command("iec104")
def bridge_iec104(
    device_id: Annotated[str | None, typer.Option("--device-id", help="The BSP's id on the bus.")] = None,
    site: Annotated[
        str | None, typer.Option(help="The site's host:port (default: the scenario's iec104 site, or 127.0.0.1:2404).")
    ] = None,
    broker: Annotated[
        str, typer.Option(help="mqtt[s]://user:pass@host:port[?protocol=3.1.1]")
    ] = "mqtt://127.0.0.1:1883",
    scenario: ScenarioOpt = REFERENCE_SCENARIO,
    speed: Annotated[float, typer.Option(callback=_positive_speed, help="Must match the suite's --speed.")] = 1.0,
):
    """A BSP on the bus whose fleet is a site on IEC 60870-5-104: setpoints become setpoint commands, the
    site's measured values its telemetry (docs/iec104.md). Serves conformance sessions as 'tsodso emulate bsp'."""
    from tsodso.testbed.emulate import bsp_profile
    from tsodso.testbed.emulate import emulate as run_emulator
    from tsodso.testbed.scenario import load_scenario

    loaded = load_scenario(scenario)
    bsp, where = _site_of(loaded, device_id if device_id in {b.id for b in loaded.bsps} else None)
    if site is not None:
        host, port = _site_address(site, f"--site {site!r}")
        where = where.model_copy(update={"host": host, "port": port})
    device_id = device_id or bsp.id
    from tsodso.schemas import signing

    key = signing.generate([f"bsp/{device_id}"])

    def ready() -> None:
        err.print(
            f"bsp/{device_id} on {broker}, bridged to IEC 104 site {where.host}:{where.port}: waiting for a session "
            "(tsodso conformance ...); Ctrl-C stops",
            highlight=False,
        )

    run_batched(
        run_emulator(
            "bsp",
            device_id,
            broker,
            bsp_profile(loaded, device_id),
            speed=speed,
            signing_key=key[f"bsp/{device_id}"],
            ready=ready,
            site=where,
        )
    )


@app.command()
def capture(
    broker: Annotated[
        str, typer.Option(callback=_answering_broker, help="mqtt[s]://user:pass@host:port[?protocol=3.1.1]")
    ] = "mqtt://127.0.0.1:1883",
    out: Annotated[Path, typer.Option(callback=_file_to_write, help="Capture file (JSON lines).")] = Path(
        "capture.jsonl"
    ),
    duration: Annotated[float | None, typer.Option(help="[s] stop after this long (default: Ctrl-C).")] = None,
    count: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    topic: Annotated[list[str] | None, typer.Option(help="Topic filter (repeatable; default tsodso/#).")] = None,
):
    """Record bus traffic with arrival times, checking each message against the contract."""
    from tsodso.testbed.capture import capture as record

    bad = [0]

    def show(msg) -> None:
        if not msg.valid:
            bad[0] += 1
            err.print(f"[red]INVALID[/] {msg.topic}: {msg.error}", highlight=False)

    try:
        n = run_batched(
            record(broker, out, duration_s=duration, count=count, filters=topic or ["tsodso/#"], on_message=show)
        )
    except KeyboardInterrupt:
        n = sum(1 for _ in out.open()) if out.exists() else 0
    console.print(f"{n} messages ({bad[0]} not following the contract) in {out}", highlight=False)


@app.command()
def replay(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A capture (tsodso capture).")
    ],
    broker: Annotated[
        str, typer.Option(callback=_answering_broker, help="mqtt[s]://user:pass@host:port[?protocol=3.1.1]")
    ] = "mqtt://127.0.0.1:1883",
    speed: Annotated[
        float, typer.Option(callback=_positive_speed, help="Replay this many times faster than recorded.")
    ] = 1.0,
    with_retained: Annotated[
        bool, typer.Option(help="Also replay the retained messages the capture began with.")
    ] = False,
):
    """Play a capture back with its original timing (or scaled) to drive a device under test."""
    from tsodso.testbed.capture import replay as play

    t0 = time.monotonic()
    n = run_batched(play(file, broker, speed=speed, skip_retained=not with_retained))
    console.print(f"replayed {n} messages in {time.monotonic() - t0:.2f} s", highlight=False)


def main() -> None:  # pragma: no cover - the console script; tests call ``app``
    """``tsodso``: a mistake the user can make ends in one line that names it, not a traceback."""
    from tsodso.actors.grid import GridError
    from tsodso.broker.launch import BrokerError
    from tsodso.gateway.client import BrokerUnreachable
    from tsodso.gateway.exchange_log import ExchangeLogError
    from tsodso.gateway.iec104 import SiteUnavailable
    from tsodso.testbed.scenario import ScenarioError
    from tsodso.testbed.security import SecretsError

    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except (
        ScenarioError,
        SecretsError,
        BrokerError,
        GridError,
        BrokerUnreachable,
        SiteUnavailable,
        ExchangeLogError,
    ) as exc:
        err.print(f"tsodso: {exc}", highlight=False, markup=False)
        sys.exit(2)


CodesOpt = Annotated[
    Path | None,
    typer.Option(
        "--codes",
        help="YAML mapping contract ids (parties, areas, assets) to their EIC codes; an id without one is written "
        "as it is with --coding-scheme.",
    ),
]
SchemeOpt = Annotated[
    str,
    typer.Option("--coding-scheme", help="Coding scheme of ids without an EIC code (a national one: NNL, NDE ...)."),
]


def _coding(codes: Path | None, scheme: str) -> "Coding":
    from tsodso.schemas.esmp import Coding
    from tsodso.testbed.esmp import load_codes

    if not (len(scheme) == 3 and scheme.isalnum() and scheme.isupper()):
        raise typer.BadParameter(
            f"{scheme!r} is not a coding scheme code such as NNL, NDE or A01", param_hint="--coding-scheme"
        )
    return Coding(load_codes(codes) if codes else {}, scheme)


@esmp_app.command("export")
def esmp_export(
    run_dir: Annotated[
        Path, typer.Argument(help="A run directory (tsodso run, demo, compare, up).", show_default=False)
    ],
    out: Annotated[
        Path | None, typer.Option(callback=_directory, help="Where the documents go (default: RUN_DIR/esmp).")
    ] = None,
    codes: CodesOpt = None,
    coding_scheme: SchemeOpt = "NNL",
    area: Annotated[str | None, typer.Option(help="Market area (default: the run's scenario's tso.area).")] = None,
) -> None:
    """Write a run's market as ENTSO-E documents: bids (ReserveBid), merit order lists (MOL), their
    validations (BidAvailability), acceptances (ReserveAllocationResult) and activations (Activation, PT4S)."""
    from tsodso.schemas.esmp import DocumentError
    from tsodso.testbed.esmp import export_run

    try:
        written, skipped = export_run(run_dir, out or run_dir / "esmp", _coding(codes, coding_scheme), area)
    except DocumentError as exc:
        err.print(f"tsodso esmp export: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    print(f"{len(written)} ENTSO-E documents in {out or run_dir / 'esmp'}:")
    for w in written:
        print(f"  {w.path.name}  {w.kind}, {w.messages} message(s)")
    for line in skipped:
        err.print(f"not exported: {line}", highlight=False, markup=False)


@esmp_app.command("import")
def esmp_import(
    file: Annotated[Path, typer.Argument(help="An ENTSO-E document (XML).", show_default=False)],
    out: Annotated[
        Path | None,
        typer.Option(callback=_file_to_write, help="Write the messages here (JSON lines) instead of stdout."),
    ] = None,
    codes: CodesOpt = None,
    coding_scheme: SchemeOpt = "NNL",
    scenario_bids: Annotated[
        bool,
        typer.Option("--scenario-bids", help="Print the bids as a scenario's bsps[].bids entries (YAML) instead."),
    ] = False,
) -> None:
    """Turn an ENTSO-E document into the contract messages it stands for, each validated as a
    receiver would (one wire message, envelope + body, per line). Exit 2 naming the element when
    the document is not one the contract can carry."""
    import yaml

    from tsodso.schemas.esmp import DocumentError
    from tsodso.testbed.esmp import import_file
    from tsodso.testbed.esmp import scenario_bids as as_scenario

    try:
        document, messages = import_file(file, _coding(codes, coding_scheme))
    except DocumentError as exc:
        err.print(f"tsodso esmp import: {file}: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    if scenario_bids:
        bids = as_scenario(document.bodies)
        if not bids:
            err.print(f"tsodso esmp import: {file} is a {document.kind}, not bids", highlight=False, markup=False)
            raise typer.Exit(2)
        text = yaml.safe_dump({"bids": bids}, sort_keys=False)
    else:
        text = "".join(json.dumps(m) + "\n" for m in messages)
    if out is None:
        print(text, end="")
    else:
        out.write_text(text)
    types = sorted({m["envelope"]["type"] for m in messages})
    err.print(
        f"{document.kind} {document.mrid} revision {document.revision} ({document.sender} -> {document.receiver}): "
        f"{len(messages)} {', '.join(types)} message(s), valid under the contract",
        highlight=False,
        markup=False,
    )
