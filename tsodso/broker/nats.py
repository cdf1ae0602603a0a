"""NATS (with JetStream and its MQTT interface) as a secured broker: per-actor users and permissions
written from the bilateral table, as ``broker.acl`` writes Mosquitto's access list.

MQTT topics are NATS subjects with '/' as '.', '+' as '*' and '#' as '>'. An MQTT client's QoS 1
subscription is a JetStream durable consumer delivering on ``$MQTT.sub.<id>``, so every user may
also subscribe there. NATS 2.9 speaks MQTT 3.1.1 only (``?protocol=3.1.1`` in the broker URL) and
needs JetStream and a server name.
"""

import json
import shutil
from pathlib import Path

from tsodso.broker.acl import username
from tsodso.schemas.envelope import Party
from tsodso.schemas.rights import Rights, default_rights
from tsodso.schemas.topics import PREFIX, inbox_filters

# How long a node waits for a client's PUBACK before it sends a QoS 1 message again (NATS: 30 s). A
# message sent towards a connection that a partition cut off is unacknowledged; once the client is
# back on another node it comes again after this, not 30 s later (receivers drop copies by message id).
ACK_WAIT = "2s"
READY_PREFIX = "tsodso-ready"  # topics of the probe that tells a cluster is ready (broker.launch)


class NatsMissing(RuntimeError):
    """The nats-server binary is not installed."""


def binary() -> str:
    for candidate in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/local/bin/nats-server"):
        if candidate and Path(candidate).exists():
            return candidate
    raise NatsMissing("nats-server is not installed (Debian/Ubuntu: apt-get install nats-server)")


def subject(topic_filter: str) -> str:
    """An MQTT topic (filter) as the NATS subject it maps to."""
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in topic_filter.split("/"))


def permissions(actor: Party, rights: Rights | None = None) -> dict:
    """What ``actor`` may publish and subscribe to: its own sends by the rights table, its own inbox."""
    rights = rights or default_rights()
    publish = [
        subject(f"{PREFIX}/{actor.role}/{actor.id}/{t}/{'all/all' if r == 'all' else r + '/+'}")
        for t, r in rights.sendable(actor.role)
    ]
    return {
        "publish": {"allow": publish},
        "subscribe": {"allow": [subject(f) for f in inbox_filters(actor)] + ["$MQTT.sub.>"]},
    }


def authorization_text(actors: list[Party], passwords: dict[str, str], *, observer: str | None = None) -> str:
    """The ``authorization`` block of a nats-server configuration (plain-text passwords: keep the file
    private, as ``testbed.security`` does)."""
    users = [
        {
            "user": username(a),
            "password": passwords[username(a)],
            "permissions": permissions(a),
            "allowed_connection_types": ["MQTT"],
        }
        for a in actors
    ]
    if observer:
        users.append(
            {
                "user": observer,
                "password": passwords[observer],
                "allowed_connection_types": ["MQTT"],
                "permissions": {  # reads the bus; writes only the readiness probe of a cluster
                    "publish": {"allow": [subject(f"{READY_PREFIX}/#")]},
                    "subscribe": {
                        "allow": [f"{PREFIX.replace('/', '.')}.>", subject(f"{READY_PREFIX}/#"), "$MQTT.sub.>"]
                    },
                },
            }
        )
    return "authorization {\n  users = " + json.dumps(users, indent=2) + "\n}\n"


def write_config(data_dir: Path, port: int, *, host: str = "127.0.0.1", auth: str | None = None) -> Path:
    """A nats-server configuration with MQTT on ``port`` (NATS itself on a port chosen by the server)."""
    return _write(data_dir, f"tsodso-{port}", host, f'listen: "{host}:{port}"', "", auth)


def _write(directory: Path, server_name: str, host: str, mqtt: str, more: str, auth: str | None) -> Path:
    """``directory``/nats.conf, readable by its owner only (it may hold passwords): NATS on a port the
    server chooses, JetStream stored in ``directory``, the ``mqtt`` block's settings, ``more`` lines."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (
        f'server_name: "{server_name}"\nlisten: "{host}:-1"\n'
        f'jetstream {{ store_dir: "{(directory / "jetstream").resolve()}" }}\n'
        f"mqtt {{ {mqtt} }}\n{more}" + (auth or "")
    )
    path = directory / "nats.conf"
    path.write_text(text)
    path.chmod(0o600)
    return path


def write_cluster_config(
    data_dir: Path,
    index: int,
    mqtt: tuple[str, int],
    routes: list[tuple[str, int]],
    *,
    auth: str | None = None,
    name: str = "tsodso",
) -> Path:
    """The configuration of node ``index`` of a cluster whose nodes route to each other at ``routes``
    (host, port; one per node, this one's included): JetStream clustered, MQTT on ``mqtt`` (host,
    port), the MQTT streams (sessions, retained messages, QoS 1 messages in flight) and consumers kept
    on 3 nodes (or all, if fewer), so that they survive the loss of one."""
    replicas = min(3, len(routes))
    host, port = mqtt
    route_host, route_port = routes[index]
    urls = ", ".join(f'"nats-route://{h}:{p}"' for h, p in routes)
    return _write(
        data_dir / f"node{index}",
        f"{name}-n{index}",
        host,
        f'listen: "{host}:{port}", stream_replicas: {replicas}, consumer_replicas: {replicas}, ack_wait: "{ACK_WAIT}"',
        f'cluster {{ name: "{name}", listen: "{route_host}:{route_port}", routes: [{urls}] }}\n',
        auth,
    )
