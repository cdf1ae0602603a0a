"""A deployment's secrets: one identity per actor, generated in one command (``tsodso secure init``).

    secrets/
      public-keys.json        every party's Ed25519 public key: give it to everyone (schemas.signing)
      tso-tso.secret.json     one per actor, readable by its owner only: its signing key (32-byte seed)
      dso-dso1.secret.json      and its own broker password
      ...
      observer.secret.json    a read-only broker identity for capture and monitoring tools
      mosquitto/acl           the access list written from the rights table (broker.acl)
      mosquitto/passwd        the password file, one random password per actor (never one shared)
      nats/authorization.conf the same users and permissions for nats-server (MQTT interface)
      tls/ca.crt              the deployment's own certificate authority (its key: tls/ca.key)
      tls/server.crt, .key    the broker's certificate (localhost, 127.0.0.1 and --host names)
      tls/<role>-<id>.crt,.key  one client certificate per actor (CN = its broker username), for
                              mutual TLS: ``tsodso broker mosquitto --secrets DIR --tls``

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

from tsodso.actors.config import Scenario
from tsodso.broker.acl import username, write_auth
from tsodso.broker.nats import authorization_text
from tsodso.gateway.arrival import Trust
from tsodso.schemas import signing
from tsodso.schemas.envelope import Party

OBSERVER = "observer"


class SecretsError(ValueError):
    """A secrets directory that is missing, incomplete or does not fit the scenario (one clear line)."""


def parties(scenario: Scenario) -> list[Party]:
    """Every actor of the scenario (the market operator too: any scheme may be chosen at run time)."""
    return [
        Party(role="tso", id=scenario.tso.id),
        *(Party(role="dso", id=d.id) for d in scenario.dsos),
        *(Party(role="bsp", id=b.id) for b in scenario.bsps),
        Party(role="mo", id=scenario.market_operator),
    ]


def secret_path(directory: Path, party: Party | str) -> Path:
    name = username(party) if isinstance(party, Party) else party
    return directory / f"{name}.secret.json"


def init(directory: Path, scenario: Scenario, hosts: list[str] | None = None) -> list[Party]:
    """Write a fresh identity for every actor of ``scenario`` (and the observer) into ``directory``;
    ``hosts``: names and addresses the broker's certificate is for, besides localhost/127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    actors = parties(scenario)
    keys = signing.generate(str(p) for p in actors)
    passwords = {username(p): random_secrets.token_urlsafe(24) for p in actors} | {
        OBSERVER: random_secrets.token_urlsafe(24)
    }
    (directory / "public-keys.json").write_text(signing.public_keys_json(signing.public_keys(keys)))
    for p in actors:
        signing.write_private(
            secret_path(directory, p),
            json.dumps(
                {
                    "party": str(p),
                    "username": username(p),
                    "broker_password": passwords[username(p)],
                    "signing_key": signing.seed_text(keys[str(p)]),
                },
                indent=2,
            )
            + "\n",
        )
    signing.write_private(
        secret_path(directory, OBSERVER),
        json.dumps({"party": None, "username": OBSERVER, "broker_password": passwords[OBSERVER]}, indent=2) + "\n",
    )
    write_auth(directory / "mosquitto", actors, passwords, observer=OBSERVER)
    nats_auth = directory / "nats" / "authorization.conf"
    nats_auth.parent.mkdir(exist_ok=True)
    signing.write_private(nats_auth, authorization_text(actors, passwords, observer=OBSERVER))
    write_tls(directory / "tls", [username(p) for p in actors] + [OBSERVER], ["localhost", "127.0.0.1", *(hosts or [])])
    return actors


def write_tls(directory: Path, clients: list[str], hosts: list[str], *, days: int = 365) -> None:
    """A certificate authority of the deployment's own, the broker's certificate for ``hosts`` and one
    client certificate per name (CN = the broker username), EC P-256, valid for ``days``."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tsodso testbed"),
                x509.NameAttribute(NameOID.COMMON_NAME, cn),
            ]
        )

    def save(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        signing.write_private(
            directory / f"{stem}.key",
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ).decode(),
        )
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        subject: str, key: ec.EllipticCurvePrivateKey, *, ca: bool = False, server: bool = False
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name("tsodso testbed CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if server:
            sans = [x509.IPAddress(ipaddress.ip_address(h)) if _is_ip(h) else x509.DNSName(h) for h in hosts]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        elif not ca:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
        return builder.sign(ca_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    save("ca", ca_key, issue("tsodso testbed CA", ca_key, ca=True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    save("server", server_key, issue(hosts[0], server_key, server=True))
    for client in clients:
        key = ec.generate_private_key(ec.SECP256R1())
        save(client, key, issue(client, key))


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def tls_files(directory: Path, name: str) -> tuple[str, str, str]:
    """(CA certificate, client certificate, client key) of broker username ``name`` for mutual TLS."""
    tls = directory / "tls"
    files = (tls / "ca.crt", tls / f"{name}.crt", tls / f"{name}.key")
    for f in files:
        if not f.exists():
            raise SecretsError(f"{f}: missing (tsodso secure init writes it)")
    return tuple(str(f) for f in files)  # type: ignore[return-value]


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
        raise SecretsError(
            f"{path}: no secret for {party} in {directory} (tsodso secure init --scenario ... --out {directory})"
        )
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
