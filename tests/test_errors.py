"""Every failure gets the one JSON error shape and the right status, and is recorded.

Upstream stalls and garbage at each phase are in the fault catalogue, tests/test_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.gateway_proc import Gateway, free_port, start_gateway
from tests.helpers import ask, assert_error, unique, wait_record

pytestmark = pytest.mark.server

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"


@pytest.fixture(scope="module")
def unreachable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose Ollama address has nothing listening."""
    closed = free_port()
    data = tmp_path_factory.mktemp("unreachable") / "data"
    with start_gateway(data, "--ollama", f"127.0.0.1:{closed}") as server:
        yield server


@pytest.mark.parametrize("path", [SYNC, STREAM])
@pytest.mark.parametrize("body", [b"{not json", b'{"agent": "llama3", "content": "x"', b"", b"   "])
def test_malformed_json_is_400(client: httpx.Client, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"Content-Type": "application/json"})

    assert_error(response, 400, "invalid_json")


@pytest.mark.parametrize("path", [SYNC, STREAM])
@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"content": "hi"}, "agent"),
        ({"agent": "llama3"}, "content"),
        ({"agent": "llama3", "content": 5}, "$.content"),
        ({"agent": "llama3", "content": ""}, "$.content"),
        ({"agent": "llama3", "content": "hi", "project": ["a"]}, "$.project"),
        ({"agent": "../../etc/passwd", "content": "hi"}, "$.agent"),
        ({"agent": "evil.host:8080/x", "content": "hi"}, "$.agent"),
        ({"agent": "", "content": "hi"}, "$.agent"),
        (["llama3", "hi"], "object"),
    ],
)
def test_wrong_fields_are_422_with_the_path(
    client: httpx.Client, path: str, body: object, where: str
) -> None:
    response = client.post(path, json=body)

    error = assert_error(response, 422, "invalid_request")
    assert where in error["message"]


def test_wrong_query_fields_are_422(client: httpx.Client) -> None:
    response = client.get(STREAM, params={"content": "hi"})

    error = assert_error(response, 422, "invalid_request")
    assert "agent" in error["message"]


def test_unknown_model_is_404_with_ollamas_message(client: httpx.Client) -> None:
    project = unique()

    response = client.post(SYNC, json=ask("mystery", project=project))

    error = assert_error(response, 404, "model_not_found")
    assert error["message"] == 'model "mystery" not found, try pulling it first'
    record = wait_record(client, project)
    assert error["request_id"] == record["id"] == response.headers["x-request-id"]
    assert record["status"] == "error"
    assert record["error"] == error["message"]


@pytest.mark.parametrize(
    ("directive", "status", "code"),
    [
        ("[[status=503]]", 503, "upstream_busy"),
        ("[[status=500]]", 502, "upstream_error"),
        ("[[status=400]]", 400, "upstream_rejected"),
        ("[[error_after=1]]", 502, "upstream_error"),
        ("[[garbage=1]]", 502, "upstream_bad_response"),
    ],
)
def test_ollama_failures(client: httpx.Client, directive: str, status: int, code: str) -> None:
    project = unique()

    response = client.post(SYNC, json=ask(content=directive, project=project))

    assert_error(response, status, code)
    if status == 503:
        assert response.headers["retry-after"].isdigit()
    record = wait_record(client, project)
    assert (record["status"], record["error_code"]) == ("error", code)


@pytest.mark.parametrize("path", [SYNC, STREAM, "/api/v1/ai/models"])
def test_unreachable_ollama_is_502_naming_the_address(unreachable: Gateway, path: str) -> None:
    address = unreachable.args[unreachable.args.index("--ollama") + 1]

    with unreachable.client() as client:
        response = client.request("GET" if path.endswith("models") else "POST", path, json=ask())

    error = assert_error(response, 502, "upstream_unavailable")
    assert address in error["message"]


def test_health_tells_ollama_down_from_all_good(unreachable: Gateway) -> None:
    with unreachable.client() as client:
        response = client.get("/health")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["gateway"], body["ollama"]["status"]) == ("degraded", "up", "down")
    assert body["ollama"]["error"]


def test_unreachable_call_is_still_recorded(unreachable: Gateway) -> None:
    project = unique()
    with unreachable.client() as client:
        client.post(SYNC, json=ask(project=project))

        record = wait_record(client, project)

    assert (record["status"], record["error_code"]) == ("error", "upstream_unavailable")
