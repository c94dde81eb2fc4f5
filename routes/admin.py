"""/api/v1/admin: the usage log, its aggregates, and its export.

Polling is cheap: every read answers with an ETag that changes only when a call is
recorded, and a request whose If-None-Match still matches gets 304 without the store
being read at all.
"""

from __future__ import annotations

import csv
import io
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal
from urllib.parse import urlencode

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from calls.errors import CallError as ApiError
from store.base import UsageStore
from store.records import Stats, Status, UsageQuery, UsageRecord, iso

from .common import JSON, decode_query, encoder, gateway_of
from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply, error

MAX_LIMIT = 1000
BUCKETS = {"minute": 60, "hour": 3600, "day": 86400}
# Part of every ETag, so that a tag handed out before a restart never matches after it.
_BOOT = secrets.token_hex(4)


class Filters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    project: str | None = None
    process_id: str | None = None
    subprocess_id: str | None = None
    model: str | None = None
    status: Status | None = None
    since: str | None = None
    until: str | None = None
    # How a call came in (`seed`, `ollama`, `openai`), by which path, which upstream answered.
    front: str | None = None
    endpoint: str | None = None
    upstream: str | None = None


# A record id, as store.new_id makes them: anything else as a cursor is a mistake, and
# an unchecked one would page from somewhere arbitrary (a garbage cursor gave the first page).
RecordId = Annotated[
    str,
    Meta(
        pattern="^[0-9a-f]{20}$",
        description="A record id (20 lowercase hex digits), as `X-Next-Cursor` gives it.",
    ),
]


class DashboardParams(Filters, kw_only=True):
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = 100
    offset: Annotated[int, Meta(ge=0)] = 0
    cursor: RecordId | None = None
    after: RecordId | None = None


class StatsParams(Filters, kw_only=True):
    bucket: Literal["minute", "hour", "day"] | None = None


class ExportParams(Filters, kw_only=True):
    format: Literal["csv", "json"] = "json"


def _moment(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time; one without a zone is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(
            422, "invalid_request", f"`{name}` must be an ISO 8601 date or date-time, not {value!r}"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    try:
        iso(moment)  # the form the store compares; a zone offset can push it out of range
    except OverflowError:
        raise ApiError(422, "invalid_request", f"`{name}` is out of range: {value!r}") from None
    return moment


def _query(params: Filters) -> UsageQuery:
    return UsageQuery(
        project=params.project,
        process_id=params.process_id,
        subprocess_id=params.subprocess_id,
        model=params.model,
        status=params.status,
        since=_moment("since", params.since),
        until=_moment("until", params.until),
        front=params.front,
        endpoint=params.endpoint,
        upstream=params.upstream,
    )


def _etag(request: Request) -> str:
    # Changes when a call is recorded, and when retention deletes old ones.
    return f'W/"{_BOOT}.{gateway_of(request).store.changes}"'


def _unchanged(request: Request, etag: str) -> Response | None:
    """304 when the client already holds what this request would return."""
    tags = request.headers.get("if-none-match", "")
    if etag in (tag.strip() for tag in tags.split(",")):
        return Response(status_code=304, headers={"ETag": etag, "Cache-Control": "no-cache"})
    return None


async def dashboard(request: Request) -> Response:
    params = decode_query(request, DashboardParams)
    query = msgspec.structs.replace(
        _query(params),
        before=params.cursor,
        after=params.after,
        offset=params.offset,
        limit=params.limit,
    )
    # Read the tag before the store: a call recorded meanwhile changes the next tag.
    etag = _etag(request)
    if (unchanged := _unchanged(request, etag)) is not None:
        return unchanged
    records = await gateway_of(request).store.query(query)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if len(records) == params.limit:
        # More may follow: the next page starts after the last record of this one.
        cursor = records[-1].id
        # `after` stays: the next page is the rest of what is newer than it.
        following = {k: v for k, v in request.query_params.items() if k not in ("cursor", "offset")}
        following["cursor"] = cursor
        headers["X-Next-Cursor"] = cursor
        headers["Link"] = f'<{request.url.path}?{urlencode(following)}>; rel="next"'
    return JSON(records, headers=headers)


def _auto_bucket(since: datetime | None, until: datetime | None) -> int:
    """Minutes for a couple of hours, hours for a few days, days beyond (or for all time)."""
    if since is None:
        return BUCKETS["day"]
    span = (until or datetime.now(UTC)) - since
    if span <= timedelta(hours=2):
        return BUCKETS["minute"]
    if span <= timedelta(days=3):
        return BUCKETS["hour"]
    return BUCKETS["day"]


async def stats(request: Request) -> Response:
    params = decode_query(request, StatsParams)
    query = _query(params)
    bucket = BUCKETS[params.bucket] if params.bucket else _auto_bucket(query.since, query.until)
    etag = _etag(request)
    if (unchanged := _unchanged(request, etag)) is not None:
        return unchanged
    result = await gateway_of(request).store.stats(query, bucket_seconds=bucket)
    return JSON(result, headers={"ETag": etag, "Cache-Control": "no-cache"})


CSV_COLUMNS = [field.name for field in msgspec.structs.fields(UsageRecord)]
# A spreadsheet runs a cell that starts with one of these as a formula; prompts are untrusted.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    if isinstance(value, list):
        return encoder.encode(value).decode()
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _pages(store: UsageStore, params: Filters) -> AsyncIterator[list[UsageRecord]]:
    """Every matching record, newest first, a page at a time."""
    return store.export(_query(params))


async def _csv(store: UsageStore, params: Filters) -> AsyncIterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    async for page in _pages(store, params):
        buffer.seek(0)
        buffer.truncate()
        for record in page:
            writer.writerow([_cell(getattr(record, name)) for name in CSV_COLUMNS])
        yield buffer.getvalue()


async def _json(store: UsageStore, params: Filters) -> AsyncIterator[bytes]:
    yield b"["
    separator = b"\n"
    async for page in _pages(store, params):
        # One chunk per page: a send per record would cost more than the encoding.
        yield separator + b",\n".join(encoder.encode(record) for record in page)
        separator = b",\n"
    yield b"\n]\n"


async def export(request: Request) -> Response:
    params = decode_query(request, ExportParams)
    _query(params)  # a bad `since`/`until` is a 422 now, not a broken download later
    store = gateway_of(request).store
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    disposition = f'attachment; filename="usage-{stamp}.{params.format}"'
    headers = {"Content-Disposition": disposition, "Cache-Control": "no-store"}
    if params.format == "csv":
        return StreamingResponse(
            _csv(store, params), media_type="text/csv; charset=utf-8", headers=headers
        )
    return StreamingResponse(_json(store, params), media_type="application/json", headers=headers)


routes = [
    Route("/api/v1/admin/dashboard", dashboard, methods=["GET"]),
    Route("/api/v1/admin/stats", stats, methods=["GET"]),
    Route("/api/v1/admin/export", export, methods=["GET"]),
]


_ETAG = {"ETag": "Changes only when a call is recorded.", "Cache-Control": "no-cache"}

openapi: Paths = {
    "/api/v1/admin/dashboard": {
        "GET": Operation(
            summary="The usage log, newest first",
            tag="admin",
            description="One record per call, filtered by the query parameters. `since` and "
            "`until` are ISO 8601 dates or date-times (UTC when no zone is given). A full page "
            "has `X-Next-Cursor` and a `Link: rel=next` header: pass the cursor back as "
            "`cursor` for the next page.",
            query=DashboardParams,
            auth=ADMIN,
            headers={"If-None-Match": "The ETag of a previous answer."},
            replies={
                304: Reply(description="Nothing was recorded since that ETag."),
                401: UNAUTHORIZED,
                200: Reply(
                    description="The matching usage records.",
                    json=list[UsageRecord],
                    headers={
                        **_ETAG,
                        "X-Next-Cursor": "Present when more records may follow: the `cursor` "
                        "for the next page.",
                        "Link": 'The next page\'s URL, as `<...>; rel="next"`.',
                    },
                ),
                422: error("A query parameter is invalid or repeated (`invalid_request`)."),
            },
        )
    },
    "/api/v1/admin/stats": {
        "GET": Operation(
            summary="Aggregates of the usage log",
            tag="admin",
            description="Totals, calls and tokens over time, and breakdowns by model, project, "
            "process, front, endpoint and upstream, over every record matching the filters, "
            "computed by the gateway. "
            "`bucket` sets the time series' step; without it the gateway picks minutes, hours "
            "or days from the period. Answers carry an ETag; a matching `If-None-Match` gets 304.",
            query=StatsParams,
            auth=ADMIN,
            headers={"If-None-Match": "The ETag of a previous answer."},
            replies={
                200: Reply(description="The aggregates.", json=Stats, headers=_ETAG),
                304: Reply(description="Nothing was recorded since that ETag."),
                401: UNAUTHORIZED,
                422: error("A query parameter is invalid (`invalid_request`)."),
            },
        )
    },
    "/api/v1/admin/export": {
        "GET": Operation(
            summary="Export the matching records, as JSON or CSV",
            tag="admin",
            description="Streams every record matching the filters, newest first, read a page "
            "at a time. CSV cells that a spreadsheet would run as formulas get a leading `'`.",
            query=ExportParams,
            auth=ADMIN,
            replies={
                200: Reply(
                    description="The records, as a download.",
                    json=list[UsageRecord],
                    text="text/csv",
                    headers={"Content-Disposition": "attachment; filename=usage-<time>.<format>"},
                ),
                401: UNAUTHORIZED,
                422: error("A query parameter is invalid (`invalid_request`)."),
            },
        )
    },
}
