"""The admin endpoints behind the dashboard: stats, cheap polling, export, and the page itself."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest

from ollama_host.requestlog import new_id
from routes import admin
from store import InputMessage, TinyDBStore, UsageQuery, UsageRecord, iso
from store import base as store_base
from tests.gateway_proc import Gateway
from tests.helpers import ask, assert_error, records, unique

pytestmark = pytest.mark.server


@pytest.fixture
def client(gateway: Gateway) -> Iterator[httpx.Client]:
    with gateway.client() as client:
        yield client


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


def make_calls(client: httpx.Client, project: str) -> None:
    """Three calls in one project: two models, one upstream failure."""
    for body in (
        ask("llama3", "one [[tokens=3]]", project=project, process_id="p", subprocess_id="a"),
        ask("llama3", "two [[tokens=5]]", project=project, process_id="p", subprocess_id="b"),
        ask("qwen", "three [[status=500]]", project=project),
    ):
        client.post("/api/v1/ai/ask_sync", json=body)


def test_stats_adds_up_the_filtered_records(client: httpx.Client) -> None:
    project = unique()
    make_calls(client, project)

    response = client.get("/api/v1/admin/stats", params={"project": project, "bucket": "minute"})

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


def test_stats_picks_a_bucket_that_fits_the_period(client: httpx.Client) -> None:
    since = (datetime.now(UTC) - timedelta(days=2)).isoformat()

    response = client.get("/api/v1/admin/stats", params={"since": since, "project": unique()})

    assert response.status_code == 200
    assert response.json()["bucket_seconds"] == 3600


def test_stats_rejects_an_unknown_bucket(client: httpx.Client) -> None:
    response = client.get("/api/v1/admin/stats", params={"bucket": "fortnight"})

    assert_error(response, 422, "invalid_request")


def test_an_unchanged_log_is_answered_304(client: httpx.Client) -> None:
    params = {"project": unique()}
    first = client.get("/api/v1/admin/stats", params=params)
    etag = first.headers["etag"]

    again = client.get("/api/v1/admin/stats", params=params, headers={"If-None-Match": etag})

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag


def test_a_new_call_changes_the_etag(client: httpx.Client) -> None:
    project = unique()
    first = client.get("/api/v1/admin/dashboard", params={"project": project})
    client.post("/api/v1/ai/ask_sync", json=ask(project=project))

    again = client.get(
        "/api/v1/admin/dashboard",
        params={"project": project},
        headers={"If-None-Match": first.headers["etag"]},
    )

    assert again.status_code == 200
    assert [r["project"] for r in again.json()] == [project]
    assert again.headers["etag"] != first.headers["etag"]


def test_after_returns_only_newer_records(client: httpx.Client) -> None:
    project = unique()
    client.post("/api/v1/ai/ask_sync", json=ask(content="old", project=project))
    (seen,) = records(client, project=project)
    client.post("/api/v1/ai/ask_sync", json=ask(content="new", project=project))

    newer = records(client, project=project, after=seen["id"])

    assert [r["input"][0]["content"] for r in newer] == ["new"]


def test_after_pages_through_everything_newer(client: httpx.Client) -> None:
    project = unique()
    for n in range(4):
        client.post("/api/v1/ai/ask_sync", json=ask(content=f"n{n}", project=project))
    oldest = records(client, project=project)[-1]["id"]
    first = client.get(
        "/api/v1/admin/dashboard", params={"project": project, "after": oldest, "limit": 2}
    )

    rest = client.get(first.links["next"]["url"])

    assert [r["input"][0]["content"] for r in first.json() + rest.json()] == ["n3", "n2", "n1"]


def test_export_json_streams_every_filtered_record(client: httpx.Client) -> None:
    project = unique()
    make_calls(client, project)

    response = client.get("/api/v1/admin/export", params={"project": project, "status": "ok"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    exported = response.json()
    assert exported == records(client, project=project, status="ok")
    assert len(exported) == 2


def test_export_csv_has_a_header_and_one_row_per_record(client: httpx.Client) -> None:
    project = unique()
    make_calls(client, project)

    response = client.get("/api/v1/admin/export", params={"project": project, "format": "csv"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [row["model_name"] for row in rows] == ["qwen", "llama3", "llama3"]
    assert rows[2]["input"] == '[{"role":"user","content":"one [[tokens=3]]"}]'
    assert rows[2]["output"] == "w0 w1 w2 "


def test_export_csv_keeps_spreadsheets_from_running_a_tag(client: httpx.Client) -> None:
    project = "=HYPERLINK(1)" + unique()
    client.post("/api/v1/ai/ask_sync", json=ask(content="[[tokens=1]]", project=project))

    response = client.get("/api/v1/admin/export", params={"project": project, "format": "csv"})

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


def test_export_rejects_a_bad_date_before_streaming(client: httpx.Client) -> None:
    response = client.get("/api/v1/admin/export", params={"since": "yesterday"})

    assert_error(response, 422, "invalid_request")


def test_the_page_is_served_with_a_strict_policy(client: httpx.Client) -> None:
    response = client.get("/", headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert '<script type="module" src="/static/dashboard.js">' in response.text


def test_the_page_loads_its_script_and_style_from_the_gateway(client: httpx.Client) -> None:
    script = client.get("/static/dashboard.js")
    style = client.get("/static/dashboard.css")

    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
