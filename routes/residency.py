"""/api/v1/admin/residency: where model loads go, per upstream.

From the router's watch of each upstream's loaded models (their loads and unloads lately, as a
timeline) and from the usage records of the period (which calls paid for a load, how long it
took, what it unloaded): how often each model was loaded and the seconds spent loading it,
which pairs of models push each other out, which keys' options made a model reload, and one
piece of advice where the numbers support it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from calls.models import canonical
from calls.upstream import ResidencyEvent, WatchesResidency
from store.records import UsageQuery, UsageRecord

from .common import JSON, decode_query, gateway_of
from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply, error

PATH = "/api/v1/admin/residency"
# Records read at most for one answer (the newest first).
MAX_RECORDS = 100_000
# Evictions (either way) a pair needs before the view advises on it.
ADVICE_MIN = 3
NO_KEY = "no key"


class ResidencyParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    hours: Annotated[float, Meta(gt=0, le=24 * 30)] = 1.0


class ModelLoads(msgspec.Struct, kw_only=True):
    model: str
    loads: int
    # The load time the upstream reported for those calls (its load_duration), summed.
    load_seconds: float


class Pair(msgspec.Struct, kw_only=True):
    """Loading `loaded` unloaded `evicted`, this many times."""

    loaded: str
    evicted: str
    times: int
    load_seconds: float


class OptionReload(msgspec.Struct, kw_only=True):
    """Calls with this key made the upstream reload `model` for another context."""

    key: str
    model: str
    times: int
    load_seconds: float


class UpstreamView(msgspec.Struct, kw_only=True):
    name: str
    loaded: list[str]
    events: list[ResidencyEvent]
    models: list[ModelLoads]
    pairs: list[Pair]
    option_reloads: list[OptionReload]
    advice: list[str]


class ResidencyReply(msgspec.Struct, kw_only=True):
    since: str
    until: str
    hours: float
    upstreams: list[UpstreamView]
    # True when the period held more records than one answer reads (the newest were read).
    partial: bool = False


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _period(hours: float) -> str:
    return "the last hour" if hours == 1 else f"the last {hours:g} hours"


class _Tally:
    def __init__(self) -> None:
        self.loads: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
        self.pairs: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
        self.reloads: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])

    def add(self, record: UsageRecord) -> None:
        load = record.load_seconds or 0.0
        # Names as the server lists them ("llama3:latest"), whatever the caller wrote.
        model = canonical(record.model_name)
        entry = self.loads[model]
        entry[0] += 1
        entry[1] += load
        if not record.evicted:
            return
        for name in record.evicted.split(", "):
            evicted = canonical(name)
            if evicted == model:
                reload = self.reloads[(record.key_label or NO_KEY, model)]
                reload[0] += 1
                reload[1] += load
            else:
                pair = self.pairs[(model, evicted)]
                pair[0] += 1
                pair[1] += load


def _advice(name: str, tally: _Tally, hours: float) -> list[str]:
    """One piece of advice per problem the numbers show, the worst first."""
    advice: list[tuple[float, str]] = []
    seen: set[frozenset[str]] = set()
    for (a, b), (times, seconds) in tally.pairs.items():
        both = frozenset((a, b))
        if both in seen:
            continue
        seen.add(both)
        back = tally.pairs.get((b, a), [0, 0.0])
        total, cost = int(times + back[0]), seconds + back[1]
        if total < ADVICE_MIN:
            continue
        first, second = sorted(both)
        text = (
            f"{first} and {second} evicted each other {total} times in {_period(hours)} on "
            f"{name}, costing {_duration(cost)} of loading: give {name} room for both "
            f"(OLLAMA_MAX_LOADED_MODELS, or more memory), or route one of them to another "
            f"upstream (--upstream NAME=URL,models={second})"
            if back[0]
            else f"loading {a} unloaded {b} {total} times in {_period(hours)} on {name}, "
            f"costing {_duration(cost)} of loading: give {name} room for both "
            f"(OLLAMA_MAX_LOADED_MODELS, or more memory), or route one of them to another "
            f"upstream"
        )
        advice.append((cost, text))
    for (key, model), (times, seconds) in tally.reloads.items():
        if times < ADVICE_MIN:
            continue
        text = (
            f"calls with the key {key!r} made {name} reload {model} {int(times)} times in "
            f"{_period(hours)} by asking for another context, costing {_duration(seconds)}: "
            f"pin it at the gateway (--model-options '{model},num_ctx=N')"
        )
        advice.append((seconds, text))
    return [text for _, text in sorted(advice, key=lambda item: -item[0])]


async def residency(request: Request) -> Response:
    params = decode_query(request, ResidencyParams)
    gateway = gateway_of(request)
    until = datetime.now(UTC)
    since = until - timedelta(hours=params.hours)
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    read = 0
    partial = False
    async for page in gateway.store.export(UsageQuery(since=since)):
        for record in page:
            if record.cold_start and record.upstream is not None:
                tallies[record.upstream].add(record)
        read += len(page)
        if read >= MAX_RECORDS:
            partial = True
            break
    upstream = gateway.upstream
    live = upstream.residency() if isinstance(upstream, WatchesResidency) else []
    cutoff = since.isoformat()
    views = []
    for watched in live:
        tally = tallies.get(watched.name) or _Tally()
        views.append(
            UpstreamView(
                name=watched.name,
                loaded=watched.loaded,
                events=[e for e in watched.events if e.at >= cutoff],
                models=sorted(
                    (
                        ModelLoads(model=m, loads=int(v[0]), load_seconds=round(v[1], 3))
                        for m, v in tally.loads.items()
                    ),
                    key=lambda m: -m.load_seconds,
                ),
                pairs=sorted(
                    (
                        Pair(loaded=a, evicted=b, times=int(v[0]), load_seconds=round(v[1], 3))
                        for (a, b), v in tally.pairs.items()
                    ),
                    key=lambda p: -p.times,
                ),
                option_reloads=sorted(
                    (
                        OptionReload(key=k, model=m, times=int(v[0]), load_seconds=round(v[1], 3))
                        for (k, m), v in tally.reloads.items()
                    ),
                    key=lambda r: -r.times,
                ),
                advice=_advice(watched.name, tally, params.hours),
            )
        )
    return JSON(
        ResidencyReply(
            since=since.isoformat(),
            until=until.isoformat(),
            hours=params.hours,
            upstreams=views,
            partial=partial,
        )
    )


routes = [Route(PATH, residency, methods=["GET"])]

openapi: Paths = {
    PATH: {
        "GET": Operation(
            summary="Where model loads go, per upstream",
            tag="admin",
            description="Each upstream's loaded models now and their loads and unloads lately "
            "(from its /api/ps, watched), how often each model was loaded in the period and the "
            "seconds spent loading it, which pairs of models unloaded each other, which keys' "
            "options (another `num_ctx`) made a model reload, and advice where the numbers "
            "support it.",
            query=ResidencyParams,
            replies={
                200: Reply(description="The residency view.", json=ResidencyReply),
                401: UNAUTHORIZED,
                422: error("A query parameter is invalid (`invalid_request`)."),
            },
            auth=ADMIN,
        )
    }
}
