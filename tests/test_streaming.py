"""ask_async: SSE framing read as a browser reads it, flushing, keep-alives, cancellation.

The event lists leave out `loading`: it is sent when the upstream had not loaded the model at
its last health check, which depends on what the session's stand-in has served lately."""

from __future__ import annotations

import httpx
import pytest

from tests.gateway_proc import Gateway
from tests.helpers import ask, calls_with, data, read_events, read_until, unique, wait_record
from tests.ollama_standin import TRICKY_TOKENS, StandIn
from tests.sse import SSEParser

pytestmark = pytest.mark.server

STREAM = "/api/v1/ai/ask_async"


def test_stream_sends_start_tokens_and_done(client: httpx.Client) -> None:
    project = unique()

    with client.stream(
        "POST", STREAM, json=ask(content="hi [[tokens=3]]", project=project)
    ) as response:
        events, _ = read_events(response)

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-accel-buffering"] == "no"
    assert "no-cache" in response.headers["cache-control"]
    assert [e.event for e in events if e.event != "loading"] == [
        "start",
        "token",
        "token",
        "token",
        "done",
    ]
    assert [e.id for e in events] == [str(i) for i in range(len(events))]
    call_id = response.headers["x-request-id"]
    assert data(events[0]) == {"id": call_id, "model": "llama3"}
    assert [data(e)["content"] for e in events[1:4]] == ["w0 ", "w1 ", "w2 "]
    done = data(events[-1])
    assert done["id"] == call_id
    assert done["status"] == "ok"
    assert (done["input_tokens"], done["output_tokens"], done["total_tokens"]) == (2, 3, 5)
    assert done["ttft_seconds"] is not None
    record = wait_record(client, project)
    assert record["id"] == call_id
    assert record["streamed"] is True
    assert record["output"] == "w0 w1 w2 "


def test_any_text_survives_the_stream(client: httpx.Client) -> None:
    with client.stream(
        "POST", STREAM, json=ask(content="[[tricky=1]]", project=unique())
    ) as response:
        events, _ = read_events(response)

    tokens = [data(e)["content"] for e in events if e.event == "token"]
    assert tokens == list(TRICKY_TOKENS)


def test_multiline_framing_is_read_like_a_browser() -> None:
    # The gateway writes one data line per event; a browser must also accept the
    # general form. This pins the parser the other tests rely on.
    events = SSEParser().feed("id: 7\r\nevent: token\ndata: a\ndata: b\r\r\n: c\n\n")

    assert [(e.event, e.data, e.id) for e in events] == [("token", "a\nb", "7")]


def test_get_stream_for_eventsource(client: httpx.Client) -> None:
    params = {"agent": "llama3", "content": "hi [[tokens=2]]", "project": unique()}

    with client.stream(
        "GET", STREAM, params=params, headers={"Accept": "text/event-stream"}
    ) as response:
        events, _ = read_events(response)

    assert response.status_code == 200
    assert [e.event for e in events if e.event != "loading"] == ["start", "token", "token", "done"]


def test_eventsource_reconnect_gets_204(client: httpx.Client, standin: StandIn) -> None:
    marker = unique("reconnect")
    params = {"agent": "llama3", "content": marker}

    response = client.get(STREAM, params=params, headers={"Last-Event-ID": "4"})

    assert response.status_code == 204
    assert calls_with(standin.calls(), marker) == []


def test_tokens_are_flushed_as_they_arrive(client: httpx.Client, standin: StandIn) -> None:
    marker = unique("flush")
    body = ask(content=f"{marker} [[tokens=5]] [[delay=0.3]]", project=unique())

    with client.stream("POST", STREAM, json=body) as response:
        alive = read_until(response, "token")
        # The first token reached us while Ollama was still generating the rest.
        (call,) = calls_with(standin.calls(), marker)
        assert not call["finished"]
        assert not call["disconnected"]
        del alive


def test_keepalive_comments_while_the_model_loads(client: httpx.Client) -> None:
    # The stream opens after --open-wait (1 s); pings come every 0.2 s (conftest). A load of
    # 1.2 s left one ping's worth of margin, and the test failed now and then.
    body = ask(content="[[load=2]] [[tokens=1]]", project=unique())

    with client.stream("POST", STREAM, json=body) as response:
        events, comments = read_events(response)

    assert comments, "no keep-alive comment while the model loaded"
    assert [e.event for e in events if e.event != "loading"] == ["start", "token", "done"]


def test_mid_stream_failure_is_an_error_event(client: httpx.Client) -> None:
    project = unique()

    with client.stream(
        "POST", STREAM, json=ask(content="[[error_after=2]]", project=project)
    ) as response:
        events, _ = read_events(response)

    assert response.status_code == 200
    assert [e.event for e in events if e.event != "loading"] == ["start", "token", "token", "error"]
    assert events[-1].id == "3"
    error = data(events[-1])["error"]
    assert error["code"] == "upstream_error"
    assert "runner crashed" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    record = wait_record(client, project)
    assert record["status"] == "error"
    assert record["error_code"] == "upstream_error"
    assert record["output"] == "w0 w1 "


def test_bad_upstream_line_is_an_error_event(client: httpx.Client) -> None:
    with client.stream(
        "POST", STREAM, json=ask(content="[[garbage=1]]", project=unique())
    ) as response:
        events, _ = read_events(response)

    assert events[-1].event == "error"
    assert data(events[-1])["error"]["code"] == "upstream_bad_response"


def test_unknown_model_fails_before_the_stream(client: httpx.Client) -> None:
    project = unique()

    response = client.post(STREAM, json=ask("no-such-model", project=project))

    assert response.status_code == 404
    assert (
        response.json()["error"]["message"]
        == 'model "no-such-model" not found, try pulling it first'
    )
    assert wait_record(client, project)["status"] == "error"


def test_client_hangup_stops_ollama_and_records_cancelled(
    client: httpx.Client, standin: StandIn
) -> None:
    marker, project = unique("hangup"), unique()
    body = ask(content=f"{marker} [[stall=2]]", project=project)

    with client.stream("POST", STREAM, json=body) as response:
        parser = SSEParser()
        seen: list[str] = []
        for text in response.iter_text():
            seen.extend(e.event for e in parser.feed(text))
            if seen.count("token") == 2:
                break
    # Leaving the block closed the connection, as curl's Ctrl-C or EventSource.close() does.

    standin.wait_for(lambda calls: any(c["disconnected"] for c in calls_with(calls, marker)))
    record = wait_record(client, project)
    assert record["status"] == "cancelled"
    assert record["output"] == "w0 w1 "
    assert record["output_tokens"] == 2
    assert record["tokens_estimated"] is True
    assert record["input_tokens"] is None


def test_hangup_while_the_model_loads(client: httpx.Client, standin: StandIn) -> None:
    marker, project = unique("loading"), unique()
    body = ask(content=f"{marker} [[load=30]]", project=project)

    with client.stream("POST", STREAM, json=body) as response:
        parser = SSEParser()
        for text in response.iter_text():
            if any(e.event == "start" for e in parser.feed(text)):
                break

    standin.wait_for(lambda calls: any(c["disconnected"] for c in calls_with(calls, marker)))
    record = wait_record(client, project)
    assert record["status"] == "cancelled"
    assert record["output"] == ""


def test_sync_client_hangup_is_cancelled_too(gateway: Gateway, standin: StandIn) -> None:
    marker, project = unique("synchangup"), unique()
    body = ask(content=f"{marker} [[stall=1]]", project=project)

    with (
        httpx.Client(base_url=gateway.url, timeout=0.5) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.post("/api/v1/ai/ask_sync", json=body)

    standin.wait_for(lambda calls: any(c["disconnected"] for c in calls_with(calls, marker)))
    with gateway.client() as client:
        assert wait_record(client, project)["status"] == "cancelled"
