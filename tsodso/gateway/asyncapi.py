"""The AsyncAPI 3.0 document of the contract: channels (the topic namespace), one operation per
row of the bilateral table, messages whose payloads are the exported JSON Schemas, and MQTT
bindings from the delivery policy (qos, retain, messageExpiryInterval)."""

from pathlib import Path
from typing import Any

import yaml

from tsodso.gateway.policy import DELIVERY_POLICY
from tsodso.schemas.envelope import SCHEMA_VERSION
from tsodso.schemas.messages import MESSAGE_TYPES, RESPONSE_TYPES
from tsodso.schemas.rights import Rights, default_rights
from tsodso.schemas.topics import PREFIX

MQTT_BINDING_VERSION = "0.2.0"
ROLE_NAMES = {"tso": "TSO", "dso": "DSO", "bsp": "BSP", "mo": "market operator", "all": "everyone"}


def _channel_id(type_name: str) -> str:
    return type_name


def asyncapi_document(rights: Rights | None = None) -> dict[str, Any]:
    rights = rights or default_rights()
    role_param = {
        "description": "Role: tso, dso, bsp, mo, or all (broadcast).",
        "enum": ["tso", "dso", "bsp", "mo", "all"],
    }
    id_param = {"description": "Actor identifier within the role ('all' for a broadcast to the role)."}
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for type_name, body_cls in sorted(MESSAGE_TYPES.items()):
        policy = DELIVERY_POLICY[type_name]
        msg_name = body_cls.__name__
        message: dict[str, Any] = {
            "name": type_name,
            "title": msg_name,
            "summary": (body_cls.__doc__ or "").strip().split("\n")[0],
            "contentType": "application/json",
            "payload": {"$ref": f"schemas/{type_name}.json"},
            "bindings": {
                "mqtt": {
                    "payloadFormatIndicator": 1,
                    "contentType": "application/json",
                    "bindingVersion": MQTT_BINDING_VERSION,
                }
            },
        }
        if type_name in RESPONSE_TYPES.values():
            message["correlationId"] = {
                "description": "An answer carries the request's message id as MQTT 5 Correlation Data and as "
                "envelope.causation_id.",
                "location": "$message.payload#/envelope/causation_id",
            }
        messages[msg_name] = message
        channels[_channel_id(type_name)] = {
            "address": f"{PREFIX}/{{senderRole}}/{{senderId}}/{type_name}/{{recipientRole}}/{{recipientId}}",
            "title": type_name,
            "description": (body_cls.__doc__ or "").strip(),
            "parameters": {
                "senderRole": role_param,
                "senderId": id_param,
                "recipientRole": role_param,
                "recipientId": id_param,
            },
            "messages": {msg_name: {"$ref": f"#/components/messages/{msg_name}"}},
        }
    operations: dict[str, Any] = {}
    for sender, type_name, recipient in sorted(rights.allowed):
        policy = DELIVERY_POLICY[type_name]
        binding: dict[str, Any] = {"qos": policy.qos, "retain": policy.retain, "bindingVersion": MQTT_BINDING_VERSION}
        if policy.expiry_s is not None:
            binding["messageExpiryInterval"] = int(policy.expiry_s)
        msg_name = MESSAGE_TYPES[type_name].__name__
        op: dict[str, Any] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{_channel_id(type_name)}"},
            "title": f"{ROLE_NAMES[sender]} sends {type_name} to {ROLE_NAMES[recipient]}",
            "summary": f"senderRole={sender}, recipientRole={recipient}",
            "messages": [{"$ref": f"#/channels/{_channel_id(type_name)}/messages/{msg_name}"}],
            "bindings": {"mqtt": binding},
        }
        if type_name in RESPONSE_TYPES and RESPONSE_TYPES[type_name] != type_name:
            response = RESPONSE_TYPES[type_name]
            op["reply"] = {
                "channel": {"$ref": f"#/channels/{_channel_id(response)}"},
                "messages": [{"$ref": f"#/channels/{response}/messages/{MESSAGE_TYPES[response].__name__}"}],
            }
        operations[f"{sender}_sends_{type_name}_to_{recipient}"] = op
        # the same row seen from the recipient: what it must subscribe to and handle
        receivers = ["tso", "dso", "bsp", "mo"] if recipient == "all" else [recipient]
        for receiver in receivers:
            name = f"{receiver}_receives_{type_name}_from_{sender}"
            if name in operations:
                continue
            operations[name] = {
                "action": "receive",
                "channel": {"$ref": f"#/channels/{_channel_id(type_name)}"},
                "title": f"{ROLE_NAMES[receiver]} receives {type_name} from {ROLE_NAMES[sender]}",
                "summary": f"senderRole={sender}, recipientRole={recipient}; subscribe to "
                f"{PREFIX}/+/+/+/{receiver}/{{own id}}, {PREFIX}/+/+/+/{receiver}/all and {PREFIX}/+/+/+/all/all",
                "messages": [{"$ref": f"#/channels/{_channel_id(type_name)}/messages/{msg_name}"}],
                "bindings": {"mqtt": {"qos": policy.qos, "bindingVersion": MQTT_BINDING_VERSION}},
            }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "TSO-DSO-BSP coordination contract",
            "version": SCHEMA_VERSION,
            "description": (
                "Messages exchanged by transmission (TSO) and distribution (DSO) system operators and balancing "
                "service providers (BSP) over MQTT. Every payload is {envelope, body}; the envelope's type names the "
                "body. Topics: " + PREFIX + "/{senderRole}/{senderId}/{type}/{recipientRole}/{recipientId}. "
                "Operations list who may send what to whom (the bilateral table); a receiver rejects anything else "
                "with a 'rejection' message to the sender whose identity it can establish. A payload may end with a "
                "'signature' member: Ed25519 over the exact bytes before it (docs/security.md); a receiver that "
                "holds the sender's public key refuses unsigned or badly signed messages. Numbers are finite "
                "(no NaN or Infinity), integers at most 2^53 - 1; created_at may lead the receiver's clock "
                "by at most 5 s; valid_until lies within the type's delivery policy."
            ),
        },
        "defaultContentType": "application/json",
        "servers": {
            "embedded": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "3.1.1",
                "description": "The testbed's embedded broker (tsodso/broker/embedded.py).",
            },
            "mosquitto": {
                "host": "127.0.0.1:1883",
                "protocol": "mqtt",
                "protocolVersion": "5",
                "description": "Mosquitto 2 with the project's configuration (tsodso/broker/mosquitto.conf).",
            },
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def export_asyncapi(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "asyncapi.yaml"
    path.write_text(yaml.safe_dump(asyncapi_document(), sort_keys=False, allow_unicode=True, width=110))
    return path
