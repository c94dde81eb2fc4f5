"""routes/admin.py: the usage log, its aggregates, cheap polling and export, in process
through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest

from routes import admin
from routes.request_id import new_id
from store import InputMessage, TinyDBStore, UsageQuery, UsageRecord, iso
from store import base as store_base
from tests.helpers import arecords, ask, assert_error, unique

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(aclient: httpx.AsyncClient) -> httpx.AsyncClient:
    """A client of the gateway in this process, holding the admin token."""
    return aclient


def record(*, project: str, content: str) -> UsageRecord:
    return UsageRecord(
        id=new_id(),
        date=iso(datetime.now(UTC)),
        total_seconds=0.1,
        total_tokens=2,
        input_tokens=1,
        output_tokens=1,
        model_name="llama3",
        input=[InputMessage("user", content)],
        output="w0 ",
        project=project,
        status="ok",
    )


async def make_calls(client: httpx.AsyncClient, project: str) -> None:
    """Three calls in one project: two models, one upstream failure."""
    for body in (
        ask("llama3", "one [[tokens=3]]", project=project, process_id="p", subprocess_id="a"),
        ask("llama3", "two [[tokens=5]]", project=project, process_id="p", subprocess_id="b"),
        ask("qwen", "three [[status=500]]", project=project),
    ):
        await client.post("/api/v1/ai/ask_sync", json=body)


async def test_stats_adds_up_the_filtered_records(client: httpx.AsyncClient) -> None:
    project = unique()
    await make_calls(client, project)

    response = await client.get(
        "/api/v1/admin/stats", params={"project": project, "bucket": "minute"}
    )

    assert response.status_code == 200
    stats = response.json()
    # Prompt words: "one [[tokens=3]]" and "two [[tokens=5]]" are two words each.
    assert stats["totals"] == {
        "calls": 3,
        "input_tokens": 4,
        "output_tokens": 8,
        "model_seconds": stats["totals"]["model_seconds"],
        "errors": 1,
        "cancelled": 0,
        # The in-process gateway asks its Ollama directly, with no router to time the GPU.
        "gpu_seconds": 0.0,
        "gpu_load_seconds": 0.0,
        "cost": 0.0,
    }
    assert stats["totals"]["model_seconds"] > 0
    assert stats["bucket_seconds"] == 60
    assert sum(bucket["calls"] for bucket in stats["series"]) == 3
    assert [(row["key"], row["calls"], row["errors"]) for row in stats["by_model"]] == [
        ("llama3", 2, 0),
        ("qwen", 1, 1),
    ]
    assert [row["key"] for row in stats["by_project"]] == [project]
    assert sorted(row["key"] for row in stats["by_process"]) == ["-/-", "p/a", "p/b"]


async def test_stats_picks_a_bucket_that_fits_the_period(client: httpx.AsyncClient) -> None:
    since = (datetime.now(UTC) - timedelta(days=2)).isoformat()

    response = await client.get("/api/v1/admin/stats", params={"since": since, "project": unique()})

    assert response.status_code == 200
    assert response.json()["bucket_seconds"] == 3600


async def test_stats_rejects_an_unknown_bucket(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/admin/stats", params={"bucket": "fortnight"})

    assert_error(response, 422, "invalid_request")


async def test_an_unchanged_log_is_answered_304(client: httpx.AsyncClient) -> None:
    params = {"project": unique()}
    first = await client.get("/api/v1/admin/stats", params=params)
    etag = first.headers["etag"]

    again = await client.get("/api/v1/admin/stats", params=params, headers={"If-None-Match": etag})

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag


async def test_a_new_call_changes_the_etag(client: httpx.AsyncClient) -> None:
    project = unique()
    first = await client.get("/api/v1/admin/dashboard", params={"project": project})
    await client.post("/api/v1/ai/ask_sync", json=ask(project=project))

    again = await client.get(
        "/api/v1/admin/dashboard",
        params={"project": project},
        headers={"If-None-Match": first.headers["etag"]},
    )

    assert again.status_code == 200
    assert [r["project"] for r in again.json()] == [project]
    assert again.headers["etag"] != first.headers["etag"]


async def test_after_returns_only_newer_records(client: httpx.AsyncClient) -> None:
    project = unique()
    await client.post("/api/v1/ai/ask_sync", json=ask(content="old", project=project))
    (seen,) = await arecords(client, project=project)
    await client.post("/api/v1/ai/ask_sync", json=ask(content="new", project=project))

    newer = await arecords(client, project=project, after=seen["id"])

    assert [r["input"][0]["content"] for r in newer] == ["new"]


async def test_after_pages_through_everything_newer(client: httpx.AsyncClient) -> None:
    project = unique()
    for n in range(4):
        await client.post("/api/v1/ai/ask_sync", json=ask(content=f"n{n}", project=project))
    oldest = (await arecords(client, project=project))[-1]["id"]
    first = await client.get(
        "/api/v1/admin/dashboard", params={"project": project, "after": oldest, "limit": 2}
    )

    rest = await client.get(first.links["next"]["url"])

    assert [r["input"][0]["content"] for r in first.json() + rest.json()] == ["n3", "n2", "n1"]


async def test_export_json_streams_every_filtered_record(client: httpx.AsyncClient) -> None:
    project = unique()
    await make_calls(client, project)

    response = await client.get("/api/v1/admin/export", params={"project": project, "status": "ok"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    exported = response.json()
    assert exported == await arecords(client, project=project, status="ok")
    assert len(exported) == 2


async def test_export_csv_has_a_header_and_one_row_per_record(client: httpx.AsyncClient) -> None:
    project = unique()
    await make_calls(client, project)

    response = await client.get(
        "/api/v1/admin/export", params={"project": project, "format": "csv"}
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["model_name"] for row in rows] == ["qwen", "llama3", "llama3"]
    assert rows[2]["input"] == '[{"role":"user","content":"one [[tokens=3]]"}]'
    assert rows[2]["output"] == "w0 w1 w2 "


async def test_export_csv_keeps_spreadsheets_from_running_a_tag(client: httpx.AsyncClient) -> None:
    project = "=HYPERLINK(1)" + unique()
    await client.post("/api/v1/ai/ask_sync", json=ask(content="[[tokens=1]]", project=project))

    response = await client.get(
        "/api/v1/admin/export", params={"project": project, "format": "csv"}
    )

    (row,) = csv.DictReader(io.StringIO(response.text))
    assert row["project"] == "'" + project


def test_export_reads_the_store_a_page_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_base, "EXPORT_PAGE", 2)
    reads: list[UsageQuery] = []

    async def export_all() -> list[str]:
        store = TinyDBStore(tmp_path)
        try:
            for n in range(5):
                store.append(record(project="a" if n != 2 else "b", content=f"n{n}"))
            real_query = store.query

            async def counting_query(query: UsageQuery) -> list[UsageRecord]:
                reads.append(query)
                return await real_query(query)

            monkeypatch.setattr(store, "query", counting_query)
            chunks = [chunk async for chunk in admin._json(store, admin.Filters(project="a"))]
        finally:
            await store.aclose()
        return [r["input"][0]["content"] for r in msgspec.json.decode(b"".join(chunks))]

    contents = asyncio.run(export_all())

    assert contents == ["n4", "n3", "n1", "n0"]
    assert [q.limit for q in reads] == [2, 2, 2]
    assert reads[0].before is None
    assert reads[1].before is not None


async def test_export_rejects_a_bad_date_before_streaming(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/admin/export", params={"since": "yesterday"})

    assert_error(response, 422, "invalid_request")


# -- the usage log: filters, order, paging -----------------------------------------------


async def test_dashboard_filters(client: httpx.AsyncClient) -> None:
    project = unique()
    for agent, process in [("llama3", "p1"), ("qwen", "p1"), ("llama3", "p2")]:
        await client.post(
            "/api/v1/ai/ask_sync",
            json=ask(agent, project=project, process_id=process, subprocess_id="s"),
        )
    await client.post("/api/v1/ai/ask_sync", json=ask("nope", project=project))

    assert len(await arecords(client, project=project)) == 4
    assert len(await arecords(client, project=project, model="llama3")) == 2
    assert len(await arecords(client, project=project, process_id="p1")) == 2
    assert len(await arecords(client, project=project, subprocess_id="s")) == 3
    errors = await arecords(client, project=project, status="error")
    assert [r["model_name"] for r in errors] == ["nope"]
    ok_p2 = await arecords(client, project=project, status="ok", model="llama3", process_id="p2")
    assert len(ok_p2) == 1
    assert await arecords(client, project=unique()) == []


async def test_dashboard_is_newest_first_and_filters_by_time(client: httpx.AsyncClient) -> None:
    project = unique()
    for n in range(3):
        await client.post("/api/v1/ai/ask_sync", json=ask(content=f"n{n}", project=project))

    found = await arecords(client, project=project)

    assert [r["input"][-1]["content"] for r in found] == ["n2", "n1", "n0"]
    middle = found[1]["date"]
    since = await arecords(client, project=project, since=middle)
    assert [r["input"][-1]["content"] for r in since] == ["n2", "n1"]
    until = await arecords(client, project=project, until=middle)
    assert [r["input"][-1]["content"] for r in until] == ["n0"]
    assert await arecords(client, project=project, since="2999-01-01") == []


async def test_dashboard_pages_with_a_cursor_and_an_offset(client: httpx.AsyncClient) -> None:
    project = unique()
    for n in range(5):
        await client.post("/api/v1/ai/ask_sync", json=ask(content=f"n{n}", project=project))
    everything = [r["id"] for r in await arecords(client, project=project)]

    first = await client.get("/api/v1/admin/dashboard", params={"project": project, "limit": 2})
    second = await client.get(
        "/api/v1/admin/dashboard",
        params={"project": project, "limit": 2, "cursor": first.headers["x-next-cursor"]},
    )
    third = await client.get(first.headers["link"].split(";")[0].strip("<>"))
    by_offset = await arecords(client, project=project, limit=2, offset=4)

    assert [r["id"] for r in first.json()] == everything[:2]
    assert [r["id"] for r in second.json()] == everything[2:4]
    assert third.json() == second.json()
    assert [r["id"] for r in by_offset] == everything[4:]


async def test_dashboard_has_a_default_limit(client: httpx.AsyncClient) -> None:
    for _ in range(3):
        await client.post("/api/v1/ai/ask_sync", json=ask(project=unique()))

    response = await client.get("/api/v1/admin/dashboard", params={"limit": 2})

    assert len(response.json()) == 2
    assert "x-next-cursor" in response.headers


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "many"},
        {"offset": "-1"},
        {"status": "fine"},
        {"since": "yesterday"},
        {"colour": "blue"},
        {"cursor": "garbage"},
        {"cursor": "0197a3c2e4f1b2a3c4d5e6"},  # 22 digits
        {"cursor": "0197A3C2E4F1B2A3C4D5"},
        {"after": "'; DROP TABLE usage"},
    ],
)
async def test_dashboard_rejects_bad_parameters(
    client: httpx.AsyncClient, params: dict[str, str]
) -> None:
    response = await client.get("/api/v1/admin/dashboard", params=params)

    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
@pytest.mark.parametrize(
    "path", ["/api/v1/admin/dashboard", "/api/v1/admin/stats", "/api/v1/admin/export"]
)
async def test_dates_out_of_range_are_422(
    client: httpx.AsyncClient, path: str, moment: str
) -> None:
    response = await client.get(path, params={"since": moment})

    assert_error(response, 422, "invalid_request")
