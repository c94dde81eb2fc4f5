"""OLLAMA_HOST is read exactly as Ollama reads it: the tables are Ollama's own
(ollama/ollama envconfig/config_test.go, TestHost and TestConnectableHost), case for case."""

from __future__ import annotations

import pytest

from ollama_host.envhost import connectable, host, ollama_url

# TestHost: name -> (value, expect)
HOST = {
    "empty": ("", "http://127.0.0.1:11434"),
    "only address": ("1.2.3.4", "http://1.2.3.4:11434"),
    "only port": (":1234", "http://:1234"),
    "address and port": ("1.2.3.4:1234", "http://1.2.3.4:1234"),
    "hostname": ("example.com", "http://example.com:11434"),
    "hostname and port": ("example.com:1234", "http://example.com:1234"),
    "zero port": (":0", "http://:0"),
    "too large port": (":66000", "http://:11434"),
    "too small port": (":-1", "http://:11434"),
    "ipv6 localhost": ("[::1]", "http://[::1]:11434"),
    "ipv6 world open": ("[::]", "http://[::]:11434"),
    "ipv6 no brackets": ("::1", "http://[::1]:11434"),
    "ipv6 + port": ("[::1]:1337", "http://[::1]:1337"),
    "extra space": (" 1.2.3.4 ", "http://1.2.3.4:11434"),
    "extra quotes": ('"1.2.3.4"', "http://1.2.3.4:11434"),
    "extra space+quotes": (' " 1.2.3.4 " ', "http://1.2.3.4:11434"),
    "extra single quotes": ("'1.2.3.4'", "http://1.2.3.4:11434"),
    "http": ("http://1.2.3.4", "http://1.2.3.4:80"),
    "http port": ("http://1.2.3.4:4321", "http://1.2.3.4:4321"),
    "https": ("https://1.2.3.4", "https://1.2.3.4:443"),
    "https port": ("https://1.2.3.4:4321", "https://1.2.3.4:4321"),
    "proxy path": ("https://example.com/ollama", "https://example.com:443/ollama"),
    "ollama.com": ("ollama.com", "https://ollama.com:443"),
}

# TestConnectableHost
CONNECTABLE = {
    "empty": ("", "http://127.0.0.1:11434"),
    "localhost": ("127.0.0.1", "http://127.0.0.1:11434"),
    "localhost and port": ("127.0.0.1:1234", "http://127.0.0.1:1234"),
    "ipv4 unspecified": ("0.0.0.0", "http://127.0.0.1:11434"),
    "ipv4 unspecified + port": ("0.0.0.0:1234", "http://127.0.0.1:1234"),
    "ipv6 unspecified": ("[::]", "http://[::1]:11434"),
    "ipv6 unspecified + port": ("[::]:1234", "http://[::1]:1234"),
    "ipv6 localhost": ("[::1]", "http://[::1]:11434"),
    "ipv6 localhost + port": ("[::1]:1234", "http://[::1]:1234"),
    "specific address": ("192.168.1.5", "http://192.168.1.5:11434"),
    "specific address + port": ("192.168.1.5:8080", "http://192.168.1.5:8080"),
    "hostname": ("example.com", "http://example.com:11434"),
    "hostname and port": ("example.com:1234", "http://example.com:1234"),
    "https unspecified + port": ("https://0.0.0.0:4321", "https://127.0.0.1:4321"),
}


@pytest.mark.parametrize(("value", "expect"), list(HOST.values()), ids=list(HOST))
def test_host_is_envconfig_host(value: str, expect: str) -> None:
    assert host(value) == expect


@pytest.mark.parametrize(("value", "expect"), list(CONNECTABLE.values()), ids=list(CONNECTABLE))
def test_connectable_is_envconfig_connectable_host(value: str, expect: str) -> None:
    assert connectable(value) == expect


@pytest.mark.parametrize(
    ("value", "url"),
    [
        # Where the gateway connects: ConnectableHost, an empty host as Go's dialer reads it
        # (this machine), no trailing slash to double when a path is appended.
        ('"::"', "http://[::1]:11434"),
        (":1234", "http://127.0.0.1:1234"),
        ("gpu-box:port", "http://gpu-box:11434"),
        ("https://gpu-box:8443/ollama/", "https://gpu-box:8443/ollama"),
        ("http://gpu-box:99999", "http://gpu-box:80"),
    ],
)
def test_the_gateway_connects_where_ollamas_client_does(value: str, url: str) -> None:
    assert ollama_url(value) == url


def test_a_scheme_no_client_can_reach_is_refused_saying_how_ollama_reads_it() -> None:
    with pytest.raises(ValueError, match=r"ftp://gpu-box:11434.*use http:// or https://"):
        ollama_url("ftp://gpu-box")
