"""A BSP device written with nothing of the project: plain paho-mqtt, the standard library, and the
exported JSON Schemas (contract/schemas/*.json) that every message is checked against before it is
sent. It shows that a vendor can speak the contract from the documents alone.

    python tests/devices/paho_bsp.py --host 127.0.0.1 --port 1883 --device-id acme1 [--protocol 3.1.1]

Behaviour (docs/conformance.md, the BSP session script): birth with a will; on a 'run start'
system_state addressed to it, prequalification, a day-ahead schedule and one up and one down bid for
the next ISP; follows each valid delta setpoint at once (no ramp), reports telemetry every cycle to the
TSO and to the DSO of its DN asset, honours activation limits, ignores expired setpoints and answers
heartbeat probes. With --signing-key it signs every message as docs/security.md says (PyNaCl for
Ed25519, the only other library it uses).
"""

import argparse
import base64
import json
import signal
import socket
import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import paho.mqtt.client as mqtt

PREFIX = "tsodso/v1"
ISP = timedelta(minutes=15)
QOS = {"telemetry": 0, "heartbeat": 0}  # everything else this device sends is QoS 1
EXPIRY_S = {"telemetry": 8, "heartbeat": 10, "energy_bid": 900}
ASSETS = [  # (id, connection, dso, bus, share of every activation)
    ("unit1", "TN", None, None, 0.6),
    ("heatpumps", "DN", "dso1", "der-park", 0.4),
]


def now() -> datetime:
    return datetime.now(UTC)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def parse(t: str) -> datetime:
    return datetime.fromisoformat(t.replace("Z", "+00:00"))


class Device:
    def __init__(self, args: argparse.Namespace):
        self.me = {"role": "bsp", "id": args.device_id}
        # signing as docs/security.md says: Ed25519 (PyNaCl here) over the exact bytes sent
        self.signer = None
        if args.signing_key:
            from nacl.signing import SigningKey

            self.signer = SigningKey(base64.urlsafe_b64decode(args.signing_key + "=" * (-len(args.signing_key) % 4)))
        self.tso = {"role": "tso", "id": args.tso_id}
        self.schemas = {
            p.stem: jsonschema.Draft202012Validator(json.loads(p.read_text()))
            for p in Path(args.contract).glob("*.json")
        }
        self.seq: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()
        self.delivered = 0.0  # MW, what the fleet produces above its reference now
        self.limits: dict[str, float] = {}
        self.blocks: dict[tuple[str, datetime], float] = defaultdict(float)  # (asset, ISP start) -> block [MW]
        self.connected_at: datetime | None = None
        self.prequal_id: str | None = None
        self.isp0: datetime | None = None
        v5 = args.protocol == "5"
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"paho-{args.device_id}",
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        self.client.username_pw_set(args.username or args.device_id, args.password)
        will_topic, will = self.message(
            "actor_state", {"status": "offline", "since": iso(now())}, {"role": "all", "id": "all"}, sequence=0
        )
        self.client.will_set(will_topic, will, qos=1, retain=True)
        self.client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        self.client.connect(args.host, args.port, keepalive=10)

    def message(
        self,
        type_: str,
        body: dict,
        to: dict,
        *,
        sequence: int | None = None,
        valid_s: float | None = None,
        causation: str | None = None,
        correlation: str | None = None,
        reply_to: str | None = None,
    ):
        topic = f"{PREFIX}/{self.me['role']}/{self.me['id']}/{type_}/{to['role']}/{to['id']}"
        if sequence is None:
            self.seq[topic] += 1
            sequence = self.seq[topic]
        created = now()
        env = {
            "message_id": str(uuid.uuid4()),
            "type": type_,
            "schema_version": "1.0",
            "sender": self.me,
            "recipients": [to],
            "sequence": sequence,
            "created_at": iso(created),
        }
        valid_s = valid_s if valid_s is not None else EXPIRY_S.get(type_)
        if valid_s is not None:
            env["valid_until"] = iso(created + timedelta(seconds=valid_s))
        for key, value in (("causation_id", causation), ("correlation_id", correlation), ("reply_to", reply_to)):
            if value is not None:
                env[key] = value
        doc = {"envelope": env, "body": body}
        self.schemas[type_].validate(doc)  # a device bug, not something to send
        text = json.dumps(doc)
        if self.signer is not None:
            signature = base64.urlsafe_b64encode(self.signer.sign(text.encode()).signature).rstrip(b"=").decode()
            text = text[:-1] + ',"signature":"' + signature + '"}'
        return topic, text

    def send(self, type_: str, body: dict, to: dict, **kw) -> dict:
        with self.lock:
            topic, payload = self.message(type_, body, to, **kw)
            self.client.publish(topic, payload, qos=QOS.get(type_, 1), retain=type_ == "actor_state")
        return json.loads(payload)["envelope"]

    def on_connect(self, client, userdata, flags, reason, properties) -> None:
        self.connected_at = now()
        for flt in (f"{PREFIX}/+/+/+/bsp/{self.me['id']}", f"{PREFIX}/+/+/+/bsp/all", f"{PREFIX}/+/+/+/all/all"):
            client.subscribe(flt, qos=1)
        self.send(
            "actor_state",
            {"status": "online", "since": iso(self.connected_at), "software": "paho-bsp/1"},
            {"role": "all", "id": "all"},
        )

    def on_message(self, client, userdata, msg) -> None:
        try:
            doc = json.loads(msg.payload)
            env, body = doc["envelope"], doc["body"]
        except (ValueError, KeyError):
            return
        senders = ("tso", "dso", "mo") if env["type"] == "flex_activation" else ("tso",)
        if self.me not in env["recipients"] or env["sender"]["role"] not in senders:
            return
        if "valid_until" in env and parse(env["valid_until"]) < now():
            return  # expired: never acted on
        handler = getattr(self, f"on_{env['type']}", None)
        if handler:
            handler(env, body)

    def on_system_state(self, env: dict, body: dict) -> None:
        if body.get("reason") != "run start" or parse(env["created_at"]) < self.connected_at - timedelta(seconds=1):
            return
        since = parse(body["since"])
        self.isp0 = since.replace(minute=since.minute - since.minute % 15, second=0, microsecond=0) + ISP
        assets = [
            {
                "asset_id": a,
                "connection": c,
                "product": "A51",
                "capacity_up_mw": 10,
                "capacity_down_mw": 10,
                "ramp_rate_mw_per_min": 30,
                **({"dso_id": d, "connection_bus": b} if d else {}),
            }
            for a, c, d, b, _ in ASSETS
        ]
        reply_to = f"{PREFIX}/tso/{self.tso['id']}/prequalification_result/bsp/{self.me['id']}"
        self.prequal_id = self.send(
            "prequalification_request", {"bsp_id": self.me["id"], "assets": assets}, self.tso, reply_to=reply_to
        )["message_id"]

    def on_prequalification_result(self, env: dict, body: dict) -> None:
        if env.get("causation_id") != self.prequal_id:
            return
        qualified = {v["asset_id"] for v in body["verdicts"] if v["qualified"]}
        series = [
            {"asset_id": a, "p_mw": [50.0 if c == "TN" else 2.0] * 4, **({"dso_id": d} if d else {})}
            for a, c, d, _, _ in ASSETS
        ]
        self.send("schedule", {"kind": "day_ahead", "start": iso(self.isp0), "series": series}, self.tso)
        for direction, price in (("A01", 70.0), ("A02", 20.0)):
            bid_assets = [
                {
                    "asset_id": a,
                    "connection": c,
                    "share_mw": 10 * share,
                    **({"dso_id": d, "connection_bus": b} if d else {}),
                }
                for a, c, d, b, share in ASSETS
                if a in qualified
            ]
            self.send(
                "energy_bid",
                {
                    "bid_id": f"{self.me['id']}-{'up' if direction == 'A01' else 'down'}",
                    "bsp_id": self.me["id"],
                    "process": "A51",
                    "direction": direction,
                    "isp_start": iso(self.isp0),
                    "quantity_mw": sum(x["share_mw"] for x in bid_assets),
                    "price_eur_per_mwh": price,
                    "reference_mw": 52.0,
                    "ramp_rate_mw_per_min": 6.0,
                    "assets": bid_assets,
                },
                self.tso,
                valid_s=(self.isp0 + ISP - now()).total_seconds() + 60,
            )

    def on_flex_activation(self, env: dict, body: dict) -> None:
        """A block for a whole ISP: the named assets move by their share of it, on top of aFRR."""
        total = sum(a["share_mw"] for a in body["assets"])
        sign = 1.0 if body["direction"] == "A01" else -1.0
        for a in body["assets"]:
            if total > 0:
                self.blocks[(a["asset_id"], parse(body["isp_start"]))] += (
                    sign * body["activated_mw"] * a["share_mw"] / total
                )

    def on_activation_limit(self, env: dict, body: dict) -> None:
        self.limits[body["bid_id"]] = body["max_mw"]

    def on_delta_setpoint(self, env: dict, body: dict) -> None:
        reported = self.delivered  # the fleet's answer to the previous setpoint
        isp = parse(body["instant"])
        isp -= timedelta(minutes=isp.minute % 15, seconds=isp.second, microseconds=isp.microsecond)
        measurements = [
            {"resource_id": a, "p_mw": (50.0 if c == "TN" else 2.0) + self.blocks[(a, isp)] + share * reported}
            for a, c, _, _, share in ASSETS
        ]
        answer = {"causation": env["message_id"], "correlation": env.get("correlation_id") or env["message_id"]}
        self.send(
            "telemetry",
            {
                "source_id": self.me["id"],
                "instant": body["instant"],
                "cycle": body["cycle"],
                "delivered_delta_mw": reported,
                "measurements": measurements,
            },
            self.tso,
            **answer,
        )
        for (_a, c, d, _, _), m in zip(ASSETS, measurements):
            if c == "DN":
                self.send(
                    "telemetry",
                    {
                        "source_id": self.me["id"],
                        "instant": body["instant"],
                        "cycle": body["cycle"],
                        "measurements": [m],
                    },
                    {"role": "dso", "id": d},
                )
        total = 0.0
        for bid, delta in body.get("bid_deltas_mw", {}).items():
            cap = self.limits.get(bid)
            total += delta if cap is None else max(-cap, min(cap, delta))
        self.delivered = total

    def on_heartbeat(self, env: dict, body: dict) -> None:
        if "reply_to" not in env:
            return
        with self.lock:
            _, payload = self.message(
                "heartbeat",
                {"sent_at": iso(now()), "interval_s": body["interval_s"]},
                env["sender"],
                causation=env["message_id"],
                correlation=env.get("correlation_id") or env["message_id"],
            )
            self.client.publish(env["reply_to"], payload, qos=0)

    def stop(self) -> None:
        info = self.client.publish(
            *self.message("actor_state", {"status": "offline", "since": iso(now())}, {"role": "all", "id": "all"}),
            qos=1,
            retain=True,
        )
        info.wait_for_publish(2)
        self.client.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--tso-id", default="tso")
    parser.add_argument("--protocol", choices=["5", "3.1.1"], default="5")
    parser.add_argument("--username")
    parser.add_argument("--password")
    parser.add_argument(
        "--signing-key", help="Ed25519 seed (32 bytes, base64url): sign every message (docs/security.md)"
    )
    parser.add_argument("--contract", default=str(Path(__file__).resolve().parents[2] / "contract" / "schemas"))
    device = Device(parser.parse_args())
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    device.client.loop_start()
    done.wait()
    device.stop()
    device.client.loop_stop()


if __name__ == "__main__":
    main()
