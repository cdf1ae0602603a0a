"""Who may send which message type to whom: the bilateral table in ``rights.yaml``."""

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from tsodso.schemas.envelope import Party
from tsodso.schemas.messages import MESSAGE_TYPES

ROLES = ("tso", "dso", "bsp", "mo")


@dataclass(frozen=True)
class Rights:
    """A set of (sender role, type, recipient role) permissions."""

    allowed: frozenset[tuple[str, str, str]]

    @classmethod
    def load(cls, path: str | Path | None = None) -> "Rights":
        """Read a rights table (the contract's own when ``path`` is None)."""
        text = Path(path).read_text() if path else resources.files("tsodso.schemas").joinpath("rights.yaml").read_text()
        rows = yaml.safe_load(text)["rows"]
        allowed = set()
        for sender, type_name, recipient in rows:
            if type_name not in MESSAGE_TYPES:
                raise ValueError(f"rights table names unknown message type {type_name!r}")
            for s in ROLES if sender == "any" else (sender,):
                allowed.add((s, type_name, recipient))
        return cls(frozenset(allowed))

    def may_send(self, sender: Party, type_name: str, recipient: Party) -> bool:
        """True when ``sender``'s role may send ``type_name`` to ``recipient`` (a role or all/all)."""
        return (sender.role, type_name, recipient.role) in self.allowed

    def sendable(self, role: str) -> list[tuple[str, str]]:
        """(type, recipient role) pairs a role may send, sorted."""
        return sorted((t, r) for s, t, r in self.allowed if s == role)


def default_rights() -> Rights:
    return _DEFAULT


_DEFAULT = Rights.load()
