"""/api/v1/admin: the usage log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

import msgspec
from msgspec import Meta
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from errors import ApiError
from store import Status, UsageQuery, UsageRecord

from .common import JSON, decode_query, gateway_of
from .openapi import ADMIN, UNAUTHORIZED, Operation, Paths, Reply, error

MAX_LIMIT = 1000


class DashboardParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    project: str | None = None
    process_id: str | None = None
    subprocess_id: str | None = None
    model: str | None = None
    status: Status | None = None
    since: str | None = None
    until: str | None = None
    limit: Annotated[int, Meta(ge=1, le=MAX_LIMIT)] = 100
    offset: Annotated[int, Meta(ge=0)] = 0
    cursor: str | None = None


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
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def dashboard(request: Request) -> Response:
    params = decode_query(request, DashboardParams)
    query = UsageQuery(
        project=params.project,
        process_id=params.process_id,
        subprocess_id=params.subprocess_id,
        model=params.model,
        status=params.status,
        since=_moment("since", params.since),
        until=_moment("until", params.until),
        before=params.cursor,
        offset=params.offset,
        limit=params.limit,
    )
    records = await gateway_of(request).store.query(query)
    headers = {}
    if len(records) == params.limit:
        # More may follow: the next page starts after the last record of this one.
        cursor = records[-1].id
        following = {k: v for k, v in request.query_params.items() if k not in ("cursor", "offset")}
        following["cursor"] = cursor
        headers["X-Next-Cursor"] = cursor
        headers["Link"] = f'<{request.url.path}?{urlencode(following)}>; rel="next"'
    return JSON(records, headers=headers)


routes = [Route("/api/v1/admin/dashboard", dashboard, methods=["GET"])]


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
            replies={
                401: UNAUTHORIZED,
                200: Reply(
                    description="The matching usage records.",
                    json=list[UsageRecord],
                    headers={
                        "X-Next-Cursor": "Present when more records may follow: the `cursor` "
                        "for the next page.",
                        "Link": 'The next page\'s URL, as `<...>; rel="next"`.',
                    },
                ),
                422: error("A query parameter is invalid or repeated (`invalid_request`)."),
            },
        )
    }
}
