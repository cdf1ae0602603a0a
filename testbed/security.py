"""A deployment's secrets: one identity per actor, generated in one command (``tsodso secure init``).

    secrets/
      public-keys.json        every party's Ed25519 public key: give it to everyone (schemas.signing)
      tso-tso.secret.json     one per actor, readable by its owner only: its signing key (32-byte seed)
      dso-dso1.secret.json      and its own broker password
      ...
      observer.secret.json    a read-only broker identity for capture and monitoring tools
      mosquitto/acl           the access list written from the rights table (broker.acl)
      mosquitto/passwd        the password file, one random password per actor (never one shared)

An actor started with ``--secrets DIR`` signs everything it sends with its own key, checks the
signature of everything it receives against ``public-keys.json`` (unless the scenario's
``security.unsigned`` lets a party send unsigned) and logs in to the broker as ``{role}-{id}`` with
its own password. A site gets its own secret file and the public keys, nothing else.
"""

import json
import secrets as random_secrets
from dataclasses import dataclass
from pathlib import Path

from nacl.signing import SigningKey

from actors.config import Scenario
from broker.acl import username, write_auth
from gateway.arrival import Trust
from schemas import signing
from schemas.envelope import Party

OBSERVER = "observer"


class SecretsError(ValueError):
    """A secrets directory that is missing, incomplete or does not fit the scenario (one clear line)."""


def parties(scenario: Scenario) -> list[Party]:
    """Every actor of the scenario (the market operator too: any scheme may be chosen at run time)."""
    return [Party(role="tso", id=scenario.tso.id), *(Party(role="dso", id=d.id) for d in scenario.dsos),
            *(Party(role="bsp", id=b.id) for b in scenario.bsps), Party(role="mo", id=scenario.market_operator)]  # fmt: skip


def secret_path(directory: Path, party: Party | str) -> Path:
    name = username(party) if isinstance(party, Party) else party
    return directory / f"{name}.secret.json"


def init(directory: Path, scenario: Scenario) -> list[Party]:
    """Write a fresh identity for every actor of ``scenario`` (and the observer) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    actors = parties(scenario)
    keys = signing.generate(str(p) for p in actors)
    passwords = {username(p): random_secrets.token_urlsafe(24) for p in actors} | {
        OBSERVER: random_secrets.token_urlsafe(24)
    }
    (directory / "public-keys.json").write_text(signing.public_keys_json(signing.public_keys(keys)))
    for p in actors:
        signing.write_private(secret_path(directory, p), json.dumps(
            {"party": str(p), "username": username(p), "broker_password": passwords[username(p)],
             "signing_key": signing.seed_text(keys[str(p)])}, indent=2) + "\n")  # fmt: skip
    signing.write_private(secret_path(directory, OBSERVER), json.dumps(
        {"party": None, "username": OBSERVER, "broker_password": passwords[OBSERVER]}, indent=2) + "\n")  # fmt: skip
    write_auth(directory / "mosquitto", actors, passwords, observer=OBSERVER)
    return actors


@dataclass(frozen=True)
class Identity:
    """What one actor needs to speak securely: its signing key and its broker login."""

    party: Party
    signing_key: SigningKey
    username: str
    password: str


def load_identity(directory: Path, party: Party) -> Identity:
    path = secret_path(directory, party)
    if not path.exists():
        raise SecretsError(f"{path}: no secret for {party} in {directory} (tsodso secure init --scenario ... --out {directory})")
    try:
        doc = json.loads(path.read_text())
        return Identity(party, signing.key_from_seed(doc["signing_key"]), doc["username"], doc["broker_password"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SecretsError(f"{path}: not a secret file written by tsodso secure init ({exc!r})") from None


def load_login(directory: Path, name: str) -> tuple[str, str]:
    """(username, password) of a broker identity in ``directory`` (e.g. the observer)."""
    path = secret_path(directory, name)
    if not path.exists():
        raise SecretsError(f"{path}: no such secret")
    doc = json.loads(path.read_text())
    return doc["username"], doc["broker_password"]


def load_trust(directory: Path, scenario: Scenario) -> Trust:
    path = directory / "public-keys.json"
    if not path.exists():
        raise SecretsError(f"{path}: missing (tsodso secure init --scenario ... --out {directory})")
    return Trust(signing.load_public_keys(path), frozenset(scenario.security.unsigned))


def ephemeral(scenario: Scenario) -> tuple[dict[str, SigningKey], Trust]:
    """Keys made for one run in one process (``tsodso run``): every actor signs, every actor checks."""
    keys = signing.generate(str(p) for p in parties(scenario))
    return keys, Trust(signing.public_keys(keys), frozenset(scenario.security.unsigned))
