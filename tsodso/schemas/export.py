"""JSON Schema of every message as it travels: ``{"envelope": ..., "body": ...}``.

One schema per message type (draft 2020-12), self-contained (``$defs``), with ``envelope.type``
fixed to the type's name, and the optional last member ``signature`` (``schemas.signing``). Device vendors validate captured payloads against these files.
"""

import json
from pathlib import Path
from typing import Any

from tsodso.schemas.envelope import SCHEMA_VERSION, Envelope
from tsodso.schemas.messages import MESSAGE_TYPES

SCHEMA_BASE_URI = "https://tsodso-testbed.example/schemas/v1/"


def _split(schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    defs = schema.pop("$defs", {})
    return schema, defs


def message_schema(type_name: str) -> dict[str, Any]:
    """The JSON Schema of a whole message of ``type_name``."""
    body_cls = MESSAGE_TYPES[type_name]
    env_schema, env_defs = _split(Envelope.model_json_schema())
    body_schema, body_defs = _split(body_cls.model_json_schema())
    defs = {**env_defs, **body_defs, "Envelope": env_schema, body_cls.__name__: body_schema}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_BASE_URI}{type_name}.json",
        "title": f"{type_name} message",
        "description": (body_cls.__doc__ or "").strip(),
        "type": "object",
        "additionalProperties": False,
        "required": ["envelope", "body"],
        "properties": {
            "envelope": {
                "allOf": [{"$ref": "#/$defs/Envelope"}],
                "properties": {"type": {"const": type_name}, "schema_version": {"const": SCHEMA_VERSION}},
            },
            "body": {"$ref": f"#/$defs/{body_cls.__name__}"},
            "signature": {
                "type": "string",
                "pattern": "^[A-Za-z0-9_-]{86}$",
                "description": (
                    "Ed25519 signature (RFC 8032) of the sender, base64url without padding. It signs the exact "
                    "bytes of the message without this member: the payload's last 102 bytes are "
                    ',"signature":"<86 characters>"} and the signed bytes are the payload before them followed '
                    "by '}'. Required wherever the receiver holds the sender's public key (docs/security.md)."
                ),
            },
        },
        "$defs": dict(sorted(defs.items())),
    }


def dumps(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def export_examples(directory: Path) -> list[Path]:
    """Write ``<type>.json``, one valid whole message (envelope + body) per type, into ``directory``."""
    from tsodso.schemas.examples import example_messages

    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for type_name, message in sorted(example_messages().items()):
        path = directory / f"{type_name}.json"
        path.write_text(json.dumps(message, indent=2, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


def export_json_schemas(directory: Path) -> list[Path]:
    """Write ``<type>.json`` for every message type into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for type_name in sorted(MESSAGE_TYPES):
        path = directory / f"{type_name}.json"
        path.write_text(dumps(message_schema(type_name)))
        paths.append(path)
    return paths
