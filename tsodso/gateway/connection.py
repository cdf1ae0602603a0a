"""Where a gateway connects: a broker URL parsed into host, port, protocol, TLS and credentials.

    mqtt://[user[:password]@]host[:port][?protocol=5|3.1.1]
    mqtts://...                       TLS (system CA store, or ?ca=PATH)
    mqtts://...?ca=CA&cert=CRT&key=KEY  mutual TLS: this client's certificate (tsodso secure init)
    memory://NAME                     the in-memory bus NAME of this process (gateway.memory)

The protocol defaults to MQTT 5; ``protocol=3.1.1`` selects MQTT 3.1.1, where correlation and
expiry travel in the envelope only.
"""

import ssl
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit


@dataclass(frozen=True)
class BrokerSpec:
    host: str
    port: int
    protocol: int = 5  # 5 or 4 (MQTT 3.1.1)
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    cert_file: str | None = None  # client certificate (mutual TLS)
    key_file: str | None = field(default=None, repr=False)
    memory: bool = False  # the in-memory bus ``host`` of this process, not a broker

    @classmethod
    def parse(cls, url: str) -> "BrokerSpec":
        parts = urlsplit(url)
        if parts.scheme == "memory":
            if not parts.netloc:
                raise ValueError(f"broker URL {url!r}: memory://NAME names the in-memory bus")
            return cls(host=parts.netloc, port=0, protocol=4, memory=True)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt://, mqtts:// or memory://")
        if not parts.hostname:
            raise ValueError(f"broker URL {url!r} has no host")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        version = query.get("protocol", "5")
        if version not in ("5", "3.1.1", "311", "4"):
            raise ValueError(f"broker URL {url!r}: protocol must be 5 or 3.1.1, not {version!r}")
        tls = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=parts.port or (8883 if tls else 1883),
            protocol=5 if version == "5" else 4,
            tls=tls,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            ca_file=query.get("ca"),
            cert_file=query.get("cert"),
            key_file=query.get("key"),
        )

    @property
    def url(self) -> str:
        """The URL without the password."""
        if self.memory:
            return f"memory://{self.host}"
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        query = "" if self.protocol == 5 else "?protocol=3.1.1"
        return f"{scheme}://{user}{self.host}:{self.port}{query}"

    def with_credentials(self, username: str | None, password: str | None) -> "BrokerSpec":
        return replace(self, username=username, password=password)

    def with_certificate(self, ca_file: str, cert_file: str, key_file: str) -> "BrokerSpec":
        """The same broker over mutual TLS with this client certificate."""
        return replace(self, tls=True, ca_file=ca_file, cert_file=cert_file, key_file=key_file)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context
