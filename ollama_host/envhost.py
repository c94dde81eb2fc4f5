"""OLLAMA_HOST read exactly as Ollama reads it: Go's `envconfig.Host()` and
`envconfig.ConnectableHost()` (ollama/ollama, envconfig/config.go), rule for rule.

A gateway that reads the variable differently from Ollama's own tools would ask another
server than `ollama run` does on the same machine. So the quirks are kept: quotes around
the value, a bare IPv6 address, a bad port that falls back to the default (Ollama logs a
warning and goes on), `ollama.com` alone meaning https, and `0.0.0.0` or `::` meaning the
loopback address to a client. tests/test_ollama_host_envhost.py holds Ollama's own test tables.
"""

from __future__ import annotations

import ipaddress
import re

DEFAULT = "http://127.0.0.1:11434"
_PORT = re.compile(r"[+-]?[0-9]+")


def _var(value: str) -> str:
    # envconfig.Var: strings.Trim(strings.TrimSpace(v), "\"'")
    return value.strip().strip("\"'")


def _split_host_port(hostport: str) -> tuple[str, str]:
    """Go's net.SplitHostPort; ValueError where it returns an error."""
    i = hostport.rfind(":")
    if i < 0:
        raise ValueError("missing port in address")
    j = k = 0
    if hostport[0] == "[":
        end = hostport.find("]")
        if end < 0:
            raise ValueError("missing ']' in address")
        if end + 1 == len(hostport):
            raise ValueError("missing port in address")
        if end + 1 != i:
            raise ValueError("too many colons" if hostport[end + 1] == ":" else "missing port")
        host = hostport[1:end]
        j, k = 1, end + 1
    else:
        host = hostport[:i]
        if ":" in host:
            raise ValueError("too many colons in address")
    if "[" in hostport[j:]:
        raise ValueError("unexpected '[' in address")
    if "]" in hostport[k:]:
        raise ValueError("unexpected ']' in address")
    return host, hostport[i + 1 :]


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Go's net.ParseIP: no zone (`%eth0`), and a v4-mapped address is the v4 one."""
    if "%" in text:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _join_host_port(host: str, port: str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _port_ok(port: str) -> bool:
    # strconv.ParseInt(port, 10, 32), then 0 <= n <= 65535.
    return _PORT.fullmatch(port) is not None and 0 <= int(port) <= 65535


def host(value: str) -> str:
    """envconfig.Host() for OLLAMA_HOST=value, as Go's url.URL prints it."""
    s = _var(value).strip()
    default_port = "11434"
    scheme, sep, hostport = s.partition("://")
    if not sep:
        scheme, hostport = "http", s
        if s == "ollama.com":
            scheme, hostport = "https", "ollama.com:443"
    elif scheme == "http":
        default_port = "80"
    elif scheme == "https":
        default_port = "443"
    hostport, _, path = hostport.partition("/")
    try:
        name, port = _split_host_port(hostport)
    except ValueError:
        name, port = "127.0.0.1", default_port
        ip = _parse_ip(hostport.strip("[]"))
        if ip is not None:
            name = str(ip)
        elif hostport:
            name = hostport
    if not _port_ok(port):
        port = default_port
    return f"{scheme}://{_join_host_port(name, port)}{'/' + path if path else ''}"


def connectable(value: str) -> str:
    """envconfig.ConnectableHost(): Host() with 0.0.0.0 and :: (addresses to listen on, not to
    connect to) replaced by the loopback address of their family."""
    url = host(value)
    scheme, _, rest = url.partition("://")
    hostport, slash, path = rest.partition("/")
    try:
        name, port = _split_host_port(hostport)
    except ValueError:
        return url
    ip = _parse_ip(name)
    if ip is not None and ip.is_unspecified:
        name = "127.0.0.1" if ip.version == 4 else "::1"
    return f"{scheme}://{_join_host_port(name, port)}{slash}{path}"


def ollama_url(value: str) -> str:
    """The base URL the gateway asks for OLLAMA_HOST=value: what Ollama's own client connects
    to, without a trailing slash. ValueError for what no HTTP client can reach."""
    url = connectable(value)
    scheme, _, rest = url.partition("://")
    if scheme not in ("http", "https"):
        raise ValueError(
            f"Ollama address {value.strip()!r} has the scheme {scheme!r}, which Ollama reads "
            f"as {url} and no HTTP client can reach: use http:// or https://"
        )
    hostport, slash, path = rest.partition("/")
    if hostport.startswith(":"):
        # An empty host (`:1234`): Go's dialer connects to the local system.
        hostport = "127.0.0.1" + hostport
    return f"{scheme}://{hostport}{slash}{path}".rstrip("/")
