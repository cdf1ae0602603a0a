"""Where a gateway connects: a broker URL parsed into host, port, protocol, TLS and credentials.

    mqtt://[user[:password]@]host[:port][?protocol=5|3.1.1]
    mqtt://host1:port1,host2:port2,host3:port3   the nodes of a broker cluster: connect to any, fail
                                                 over to the next when one is lost
    mqtts://...                       TLS (system CA store, or ?ca=PATH)
    mqtts://...?ca=CA&cert=CRT&key=KEY  mutual TLS: this client's certificate (tsodso secure init)
    memory://NAME                     the in-memory bus NAME of this process (gateway.memory)

The protocol defaults to MQTT 5; ``protocol=3.1.1`` selects MQTT 3.1.1, where correlation and
expiry travel in the envelope only.
"""

import re
import ssl
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit

_NODE = re.compile(r"\[(?P<ip6>[^\]]+)\](?::(?P<port6>\d*))?|(?P<host>[^:\[\]]+)(?::(?P<port>\d*))?")


def _nodes(url: str, netloc: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """``host[:port]`` or ``[ipv6][:port]``, comma-separated, as (host, port) pairs."""
    nodes = []
    for text in netloc.rpartition("@")[2].split(","):
        match = _NODE.fullmatch(text.strip())
        if not match:
            raise ValueError(f"broker URL {url!r}: {text!r} is not host[:port]")
        host = match["ip6"] or match["host"]
        port_text = match["port6"] if match["ip6"] else match["port"]
        port = int(port_text) if port_text else default_port
        if not 0 < port < 65536:
            raise ValueError(f"broker URL {url!r}: port {port} of {host} is not 1..65535")
        nodes.append((host, port))
    return tuple(nodes)


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
    other_nodes: tuple[tuple[str, int], ...] = ()  # further nodes of a cluster (failover), after host:port

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """Every node to try, (host, port), this one first."""
        return ((self.host, self.port), *self.other_nodes)

    @classmethod
    def parse(cls, url: str) -> "BrokerSpec":
        parts = urlsplit(url)
        if parts.scheme == "memory":
            if not parts.netloc:
                raise ValueError(f"broker URL {url!r}: memory://NAME names the in-memory bus")
            return cls(host=parts.netloc, port=0, protocol=4, memory=True)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"broker URL {url!r}: scheme must be mqtt://, mqtts:// or memory://")
        if not parts.netloc.rpartition("@")[2]:
            raise ValueError(f"broker URL {url!r} has no host")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        version = query.get("protocol", "5")
        if version not in ("5", "3.1.1", "311", "4"):
            raise ValueError(f"broker URL {url!r}: protocol must be 5 or 3.1.1, not {version!r}")
        tls = parts.scheme == "mqtts"
        (host, port), *others = _nodes(url, parts.netloc, 8883 if tls else 1883)
        userinfo = parts.netloc.rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        return cls(
            host=host,
            port=port,
            other_nodes=tuple(others),
            protocol=5 if version == "5" else 4,
            tls=tls,
            username=unquote(user) if user else None,
            password=unquote(password) if password else None,
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
        nodes = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.nodes)
        return f"{scheme}://{user}{nodes}{query}"

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
