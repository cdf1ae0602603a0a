"""The `tsodso` command line."""

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, help="TSO-DSO-BSP coordination testbed.")
schemas_app = typer.Typer(no_args_is_help=True, help="The message contract: export and validate.")
broker_app = typer.Typer(no_args_is_help=True, help="Run a broker with the project's configuration.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results belong in BENCHMARKS.md).")
app.add_typer(schemas_app, name="schemas")
app.add_typer(broker_app, name="broker")
app.add_typer(bench_app, name="bench")

console = Console()
err = Console(stderr=True, soft_wrap=True)

@app.callback()
def _setup(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log gateway events (JSON lines) to stderr.")] = False,
) -> None:
    """Logs go to stderr (warnings only unless --verbose), so stdout stays clean for --json."""
    import logging

    from gateway.logs import configure_logging

    configure_logging(level=logging.INFO if verbose else logging.WARNING)


BrokerOpt = Annotated[
    str, typer.Option("--broker", "-b", help="embedded | mosquitto | mqtt[s]://user:pass@host:port[?protocol=3.1.1]")
]


@schemas_app.command("export")
def schemas_export(directory: Annotated[Path, typer.Argument(help="Where to write the files.")] = Path("contract")):
    """Write one JSON Schema per message type (DIR/schemas/) and the AsyncAPI 3.0 document."""
    from gateway.asyncapi import export_asyncapi
    from schemas.export import export_json_schemas

    paths = export_json_schemas(directory / "schemas")
    api = export_asyncapi(directory)
    console.print(f"wrote {len(paths)} JSON Schemas to {directory / 'schemas'} and {api}")


@schemas_app.command("validate")
def schemas_validate(
    file: Annotated[Path, typer.Argument(help="A captured payload (envelope + body), JSON; '-' for stdin.")],
    type_: Annotated[Optional[str], typer.Option("--type", "-t", help="Expected message type.")] = None,
):
    """Validate a captured message: exit 0, or exit 1 with the field path and what was wrong."""
    from schemas.validate import InvalidMessage, validate_message

    data = sys.stdin.buffer.read() if str(file) == "-" else file.read_bytes()
    try:
        env, _ = validate_message(data, type_)
    except InvalidMessage as exc:
        typer.echo(f"invalid {file}: {exc}", err=True)
        raise typer.Exit(1) from None
    console.print(f"valid {env.type} from {env.sender} to {', '.join(map(str, env.recipients))}", highlight=False)


def _serve_until_signal(proc_broker) -> None:  # noqa: ANN001
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        while not stop and proc_broker.proc.poll() is None:
            time.sleep(0.2)
    finally:
        proc_broker.stop()


@broker_app.command("embedded")
def broker_embedded(
    port: Annotated[int, typer.Option(help="TCP port (0: a free one).")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
):
    """Run the embedded broker (amqtt, MQTT 3.1.1, installed with the project) until Ctrl+C."""
    from broker import free_port
    from broker.embedded import main

    main(["--host", host, "--port", str(port or free_port(host))])


@broker_app.command("mosquitto")
def broker_mosquitto(
    port: Annotated[int, typer.Option(help="TCP port (0: a free one).")] = 0,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    data_dir: Annotated[Optional[Path], typer.Option(help="Configuration, persistence and log.")] = None,
    actors: Annotated[
        Optional[str],
        typer.Option(help="Comma-separated role/id list: write an access list and password file for them."),
    ] = None,
    password: Annotated[str, typer.Option(help="Password given to every actor with --actors.")] = "",
):
    """Run Mosquitto with the project's configuration (MQTT 5, TCP_NODELAY, persistence) until Ctrl+C."""
    from broker import start_broker
    from broker.acl import username, write_auth
    from broker.mosquitto import MosquittoMissing
    from schemas.envelope import Party

    auth = None
    data_dir = data_dir or Path("runs/mosquitto")
    if actors:
        parties = [Party(role=a.split("/")[0], id=a.split("/")[1]) for a in actors.split(",")]
        if not password:
            err.print("--actors needs --password")
            raise typer.Exit(2)
        auth = write_auth(data_dir, parties, {username(p): password for p in parties})
    try:
        running = start_broker("mosquitto", port=port or None, host=host, data_dir=data_dir, auth=auth)
    except MosquittoMissing as exc:
        err.print(str(exc))
        raise typer.Exit(1) from None
    console.print(f"mosquitto listening on {running.url} (config {data_dir / 'mosquitto.conf'})", highlight=False)
    _serve_until_signal(running)


@bench_app.command("rtt")
def bench_rtt(
    broker: BrokerOpt = "mosquitto",
    n: Annotated[int, typer.Option("--n", help="Round trips per path.")] = 2000,
    qos: Annotated[int, typer.Option("--qos", help="QoS of request and response.")] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Gateway request/response round trip vs raw aiomqtt, same run. Goal: ratio_p50 <= 1.3."""
    from broker import start_broker
    from testbed.bench.rtt import run_rtt

    with start_broker(broker) as running:
        result = asyncio.run(run_rtt(running.url, n=n, qos=qos))
    result["broker_kind"] = running.kind
    if as_json:
        print(json.dumps(result))
        return
    from rich.table import Table

    table = Table(title=f"request/response round trip, {running.kind} ({result['protocol']}), QoS {qos}, n={n}")
    for col in ("path", "p50 [ms]", "p99 [ms]"):
        table.add_column(col)
    table.add_row("gateway (typed, validated, logged)", f"{result['gateway_p50_ms']:.3f}", f"{result['gateway_p99_ms']:.3f}")
    table.add_row("raw aiomqtt", f"{result['raw_p50_ms']:.3f}", f"{result['raw_p99_ms']:.3f}")
    console.print(table)
    verdict = "[green]met[/green]" if result["ratio_p50"] <= 1.3 else "[red]not met[/red]"
    console.print(f"ratio_p50 = {result['ratio_p50']} (goal <= 1.3: {verdict})")


@app.command()
def demo(
    broker: BrokerOpt = "embedded",
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
):
    """A small TSO-DSO-BSP exchange over a real broker; prints what crossed the bus with latencies."""
    from broker import start_broker
    from gateway import ExchangeLog
    from gateway.logs import configure_logging
    from testbed.demo import exchange, print_exchange

    out.mkdir(parents=True, exist_ok=True)
    db = out / "exchange.sqlite"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    configure_logging(out / "events.jsonl")
    with start_broker(broker, data_dir=out / "broker") as running:
        console.print(f"broker: {running.kind} at {running.url}", highlight=False)
        with ExchangeLog(db, run_id="demo") as log:
            asyncio.run(exchange(running.url, log))
    print_exchange(db, console)


def main() -> None:  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app()
