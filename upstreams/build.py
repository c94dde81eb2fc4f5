"""The upstream the settings describe: every configured server, behind one Router."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol

import httpx

from calls.upstream import ModelServer
from http_transport import KeepAliveTransport
from queueing.line import Order

from .config import UpstreamSpec, specs
from .kinds import KINDS
from .router import Member, Router


class Settings(Protocol):
    """What the router is built from: the program's settings have these (and more), so the
    upstreams need not know the program."""

    @property
    def upstream(self) -> tuple[str, ...]: ...
    @property
    def upstreams_file(self) -> str | None: ...
    @property
    def ollama_url(self) -> str: ...
    @property
    def health_interval(self) -> float: ...
    @property
    def allow_cloud(self) -> bool: ...
    @property
    def upstream_queue(self) -> int: ...
    @property
    def queue_per_key(self) -> int: ...
    @property
    def queue_order(self) -> Order: ...
    @property
    def timeout(self) -> float: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def upstream_idle(self) -> float: ...
    @property
    def first_byte_timeout(self) -> float: ...
    @property
    def stream_buffer(self) -> int: ...
    @property
    def max_upstream_line(self) -> int: ...
    @property
    def max_upstream_body(self) -> int: ...


def member_upstream(
    spec: UpstreamSpec, settings: Settings, env: Mapping[str, str] | None = None
) -> ModelServer:
    """One server of the kind its spec names, with the settings' timeouts and bounds."""
    # The lean transport replaces httpcore's pool, whose cost grows with concurrency, and the
    # kinds hand it httpx requests without AsyncClient's layers (docs/performance.md). No
    # connection cap (the router caps calls) and no proxy variables, which must never reroute
    # a configured upstream.
    return KINDS[spec.kind](
        KeepAliveTransport(
            max_idle=100,
            keepalive_expiry=settings.upstream_idle,
            read_buffer=settings.stream_buffer,
        ),
        spec.url,
        httpx.Timeout(settings.timeout, connect=settings.connect_timeout),
        name=spec.name,
        max_line=settings.max_upstream_line,
        max_body=settings.max_upstream_body,
        api_key=spec.key(os.environ if env is None else env),
        first_byte=settings.first_byte_timeout if spec.first_byte is None else spec.first_byte,
    )


def build(settings: Settings, env: Mapping[str, str] | None = None) -> Router:
    """A Router over every upstream the settings configure (one, by default)."""
    found = specs(settings.upstream, settings.upstreams_file, settings.ollama_url, env)
    cooldown = settings.health_interval
    members = [Member(spec, member_upstream(spec, settings, env), cooldown) for spec in found]
    return Router(
        members,
        interval=settings.health_interval,
        allow_cloud=settings.allow_cloud,
        max_waiting=settings.upstream_queue,
        wait_seconds=settings.timeout,
        per_key=settings.queue_per_key,
        order=settings.queue_order,
    )


def describe(settings: Settings) -> str:
    """The upstreams, for the start-up line (addresses only: keys are never shown)."""
    found = specs(settings.upstream, settings.upstreams_file, settings.ollama_url)
    if len(found) == 1 and not (settings.upstream or settings.upstreams_file):
        return f"Ollama at {found[0].url}"
    return ", ".join(f"{spec.name} ({spec.kind}) at {spec.url}" for spec in found)
