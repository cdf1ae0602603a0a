"""Mosquitto with the project's configuration (``mosquitto.conf`` beside this file)."""

import getpass
import shutil
from importlib import resources
from pathlib import Path


class MosquittoMissing(RuntimeError):
    """The mosquitto binary is not installed."""


def binary() -> str:
    """Path of the mosquitto binary; MosquittoMissing says how to install it."""
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if candidate and Path(candidate).exists():
            return candidate
    raise MosquittoMissing("mosquitto is not installed (Debian/Ubuntu: apt-get install mosquitto)")


def write_config(data_dir: Path, port: int, *, host: str = "127.0.0.1", auth: str | None = None) -> Path:
    """Write the project's mosquitto.conf for ``port`` into ``data_dir``; return its path.
    ``auth`` is the output of :func:`broker.acl.write_auth` (default: anonymous access)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    template = resources.files("tsodso.broker").joinpath("mosquitto.conf").read_text()
    text = template.format(
        port=port, host=host, data_dir=data_dir.resolve(), auth=auth or "allow_anonymous true", user=getpass.getuser()
    )
    path = data_dir / "mosquitto.conf"
    path.write_text(text)
    return path
