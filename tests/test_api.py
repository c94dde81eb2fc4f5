"""The seed's contract, request by request, against the gateway under uvicorn."""

from __future__ import annotations

import re
import socket
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.gateway_proc import Gateway
from tests.helpers import ask, assert_error, only_record, records, unique
from tests.ollama_standin import StandIn

pytestmark = pytest.mark.server

SEED_FIELDS = [
    "date",
    "total_seconds",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "model_name",
    "input",
    "output",
    "project",
    "process_id",
    "subprocess_id",
]


def test_models_lists_ollama_names(client: httpx.Client) -> None:
    response = client.get("/api/v1/ai/models")

    assert response.status_code == 200
    assert response.json() == [
        "llama3:latest",
        "qwen:latest",
        "mistral:latest",
        "custom-model:latest",
    ]


def test_ask_sync_answers_plain_text(client: httpx.Client) -> None:
    response = client.post(
        "/api/v1/ai/ask_sync", json=ask(content="Explain [[tokens=3]]", project=unique())
    )

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == "w0 w1 w2 "


def test_ask_sync_answers_json_when_asked(client: httpx.Client) -> None:
    body = ask(content="one two [[tokens=4]]", template="Be brief.", project=unique())

    response = client.post("/api/v1/ai/ask_sync", json=body, headers={"Accept": "application/json"})

    assert response.status_code == 200
    reply = response.json()
    assert reply["output"] == "w0 w1 w2 w3 "
    assert reply["model"] == "llama3"
    assert reply["id"] == response.headers["x-request-id"]
    usage = reply["usage"]
    # The stand-in counts prompt words over all messages: "Be brief." + "one two [[tokens=4]]".
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (5, 4, 9)
    assert usage["status"] == "ok"
    assert usage["tokens_estimated"] is False


@pytest.mark.parametrize(
    ("accept", "json_reply"),
    [
        ("text/plain", False),
        ("*/*", False),
        ("application/json, text/plain;q=0.5", True),
        ("text/plain;q=0.2, application/json", True),
        ("text/html", False),
    ],
)
def test_ask_sync_negotiates(client: httpx.Client, accept: str, json_reply: bool) -> None:
    response = client.post(
        "/api/v1/ai/ask_sync", json=ask(project=unique()), headers={"Accept": accept}
    )

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(
        "application/json" if json_reply else "text/plain"
    )


def test_every_call_gets_one_record_with_the_seed_fields(client: httpx.Client) -> None:
    project = unique()
    before = datetime.now(UTC)
    body = ask(
        content="Explique a teoria [[tokens=5]] [[load=0.25]]",
        template="Você é um assistente educado e técnico.",
        user_key="111111122",
        project=project,
        process_id="001",
        subprocess_id="002",
    )

    response = client.post("/api/v1/ai/ask_sync", json=body)

    assert response.status_code == 200
    record = only_record(client, project)
    assert list(record)[: len(SEED_FIELDS)] == SEED_FIELDS
    assert record["id"] == response.headers["x-request-id"]
    assert record["status"] == "ok"
    assert record["streamed"] is False
    assert record["model_name"] == "llama3"
    assert record["input"] == [
        {"role": "system", "content": "Você é um assistente educado e técnico."},
        {"role": "user", "content": "Explique a teoria [[tokens=5]] [[load=0.25]]"},
    ]
    assert record["output"] == "w0 w1 w2 w3 w4 "
    assert (record["project"], record["process_id"], record["subprocess_id"]) == (
        project,
        "001",
        "002",
    )
    assert (record["input_tokens"], record["output_tokens"], record["total_tokens"]) == (12, 5, 17)
    date = datetime.fromisoformat(record["date"])
    assert date.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= date <= datetime.now(UTC)
    # Seconds, not nanoseconds; Ollama's own load time converted at the edge.
    assert 0.25 <= record["total_seconds"] < 60
    assert record["load_seconds"] == pytest.approx(0.25, abs=0.01)
    assert record["prompt_eval_seconds"] is not None
    assert record["eval_seconds"] is not None
    assert record["ttft_seconds"] is None  # a whole answer has no first token to time


def test_user_key_is_stored_as_a_fingerprint(client: httpx.Client, gateway: Gateway) -> None:
    project = unique()
    key = "sk-very-secret-4242"
    for _ in range(2):
        client.post("/api/v1/ai/ask_sync", json=ask(user_key=key, project=project))

    first, second = records(client, project=project)

    assert first["user"] == second["user"]
    assert re.fullmatch(r"fp_[0-9a-f]{20}", first["user"])
    for path in gateway.data.rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace"), path
    assert key not in gateway.logs()


def test_dashboard_filters(client: httpx.Client) -> None:
    project = unique()
    for agent, process in [("llama3", "p1"), ("qwen", "p1"), ("llama3", "p2")]:
        client.post(
            "/api/v1/ai/ask_sync",
            json=ask(agent, project=project, process_id=process, subprocess_id="s"),
        )
    client.post("/api/v1/ai/ask_sync", json=ask("nope", project=project))

    assert len(records(client, project=project)) == 4
    assert len(records(client, project=project, model="llama3")) == 2
    assert len(records(client, project=project, process_id="p1")) == 2
    assert len(records(client, project=project, subprocess_id="s")) == 3
    assert [r["model_name"] for r in records(client, project=project, status="error")] == ["nope"]
    assert len(records(client, project=project, status="ok", model="llama3", process_id="p2")) == 1
    assert records(client, project=unique()) == []


def test_dashboard_is_newest_first_and_filters_by_time(client: httpx.Client) -> None:
    project = unique()
    for n in range(3):
        client.post("/api/v1/ai/ask_sync", json=ask(content=f"n{n}", project=project))

    found = records(client, project=project)

    assert [r["input"][-1]["content"] for r in found] == ["n2", "n1", "n0"]
    middle = found[1]["date"]
    assert [r["input"][-1]["content"] for r in records(client, project=project, since=middle)] == [
        "n2",
        "n1",
    ]
    assert [r["input"][-1]["content"] for r in records(client, project=project, until=middle)] == [
        "n0"
    ]
    assert records(client, project=project, since="2999-01-01") == []


def test_dashboard_pages_with_a_cursor_and_an_offset(client: httpx.Client) -> None:
    project = unique()
    for n in range(5):
        client.post("/api/v1/ai/ask_sync", json=ask(content=f"n{n}", project=project))
    everything = [r["id"] for r in records(client, project=project)]

    first = client.get("/api/v1/admin/dashboard", params={"project": project, "limit": 2})
    second = client.get(
        "/api/v1/admin/dashboard",
        params={"project": project, "limit": 2, "cursor": first.headers["x-next-cursor"]},
    )
    third = client.get(first.headers["link"].split(";")[0].strip("<>"))
    by_offset = records(client, project=project, limit=2, offset=4)

    assert [r["id"] for r in first.json()] == everything[:2]
    assert [r["id"] for r in second.json()] == everything[2:4]
    assert third.json() == second.json()
    assert [r["id"] for r in by_offset] == everything[4:]


def test_dashboard_has_a_default_limit(client: httpx.Client) -> None:
    for _ in range(3):
        client.post("/api/v1/ai/ask_sync", json=ask(project=unique()))

    response = client.get("/api/v1/admin/dashboard", params={"limit": 2})

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
def test_dashboard_rejects_bad_parameters(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get("/api/v1/admin/dashboard", params=params)

    assert_error(response, 422, "invalid_request")


def test_health_says_all_good(client: httpx.Client, standin: StandIn) -> None:
    response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["gateway"] == "up"
    assert body["ollama"] == {
        "status": "up",
        "address": standin.url,
        "version": "0.12.0",
        "error": None,
    }
    assert body["store"]["status"] == "ok"


def test_unknown_route_and_method_are_json_errors(client: httpx.Client) -> None:
    assert_error(client.get("/api/v1/nothing"), 404, "not_found")
    assert_error(client.get("/api/v1/ai/ask_sync"), 405, "method_not_allowed")


@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
@pytest.mark.parametrize(
    "path", ["/api/v1/admin/dashboard", "/api/v1/admin/stats", "/api/v1/admin/export"]
)
def test_dates_out_of_range_are_422(client: httpx.Client, path: str, moment: str) -> None:
    response = client.get(path, params={"since": moment})

    assert_error(response, 422, "invalid_request")


def test_a_client_gone_mid_body_leaves_no_traceback(gateway: Gateway) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/ai/ask_sync HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"agent": '
        )
    # The request log's line for it comes once the gateway has noticed the hang-up.
    deadline = time.monotonic() + 10
    while "status=499" not in gateway.logs() and time.monotonic() < deadline:
        time.sleep(0.05)

    assert "status=499" in gateway.logs()
    assert "Traceback" not in gateway.logs()
