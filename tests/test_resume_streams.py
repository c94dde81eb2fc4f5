"""Resumable seed streams over HTTP, against a real gateway and the Ollama stand-in: a client
that leaves and comes back after 1 s, after 10 s, and after the window; who may resume; what a
wrong `Last-Event-ID` gets. (The kept events themselves: tests/test_routes_resuming.py; a browser's
EventSource through a cut connection: tests/test_resume_browser.py.)"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway_proc import Gateway, start_gateway
from tests.helpers import ask, assert_error, calls_with, data, read_events, unique, wait_record
from tests.ollama_standin import StandIn
from tests.sse import SSEEvent, SSEParser

pytestmark = pytest.mark.server

STREAM = "/api/v1/ai/ask_async"
RESUME = "/api/v1/ai/resume"


def read_some(response: httpx.Response, count: int) -> list[SSEEvent]:
    """The stream's first `count` events; leaving the `with` block then is a hang-up."""
    parser = SSEParser()
    events: list[SSEEvent] = []
    for text in response.iter_text():
        events.extend(parser.feed(text))
        if len(events) >= count:
            return events[:count]
    raise AssertionError(f"the stream ended after {len(events)} events: {events}")


def resumed(client: httpx.Client, handle: str, last: str) -> list[SSEEvent]:
    with client.stream(
        "GET", RESUME, params={"stream": handle}, headers={"Last-Event-ID": last}
    ) as response:
        assert response.status_code == 200, response.read()
        events, _ = read_events(response)
    return events


def tokens(events: list[SSEEvent]) -> list[str]:
    return [data(e)["content"] for e in events if e.event == "token"]


def assert_whole_once(events: list[SSEEvent], count: int) -> None:
    """Every event once, in order (ids 0, 1, 2, ...), every token, then `done`."""
    assert [int(e.id) for e in events] == list(range(len(events)))
    assert tokens(events) == [f"w{i} " for i in range(count)]
    told = [
        e.event for e in events if e.event != "loading"
    ]  # `loading` first if the stand-in had not loaded the model
    assert told == ["start"] + ["token"] * count + ["done"]
    assert data(events[-1])["status"] == "ok"


def the_error(events: list[SSEEvent]) -> dict[str, Any]:
    (event,) = events
    assert event.event == "error"
    error: dict[str, Any] = data(event)["error"]
    return error


@pytest.fixture(scope="module")
def short(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose streams are kept 1 s after their client left."""
    folder = tmp_path_factory.mktemp("short") / "data"
    with start_gateway(
        folder, "--ollama", standin.url, "--keepalive", "0.2", "--resume-window", "1"
    ) as server:
        yield server
    assert "Traceback" not in server.logs(), server.logs()


def test_a_post_stream_resumed_after_a_second_gets_the_rest_once(
    client: httpx.Client, standin: StandIn
) -> None:
    marker, project = unique("resume1"), unique()
    body = ask(content=f"{marker} [[tokens=12]] [[delay=0.1]]", project=project, resumable=True)

    with client.stream("POST", STREAM, json=body) as response:
        first = read_some(response, 4)
    time.sleep(1)
    rest = resumed(client, data(first[0])["resume"], first[-1].id)

    assert_whole_once(first + rest, 12)
    assert len(calls_with(standin.calls(), marker)) == 1
    record = wait_record(client, project)
    assert record["status"] == "ok"
    assert record["output"] == "".join(f"w{i} " for i in range(12))


def test_a_get_stream_resumed_after_ten_seconds_went_on_meanwhile(
    client: httpx.Client, standin: StandIn
) -> None:
    # 30 tokens, one every 0.4 s: the model is still at it when the client comes back.
    marker, project = unique("resume10"), unique()
    params = {"agent": "llama3", "content": f"{marker} [[tokens=30]] [[delay=0.4]]"}

    with client.stream("GET", STREAM, params={**params, "project": project}) as response:
        first = read_some(response, 3)
    time.sleep(10)
    (call,) = calls_with(standin.calls(), marker)
    rest = resumed(client, data(first[0])["resume"], first[-1].id)

    assert not call["disconnected"]  # the gateway kept asking while nobody listened
    assert_whole_once(first + rest, 30)
    assert len(calls_with(standin.calls(), marker)) == 1
    assert wait_record(client, project)["status"] == "ok"


def test_a_resume_from_any_event_gets_what_follows_it(client: httpx.Client) -> None:
    body = ask(content="[[tokens=6]]", project=unique(), resumable=True)

    with client.stream("POST", STREAM, json=body) as response:
        whole, _ = read_events(response)
    handle = data(whole[0])["resume"]
    from_start = resumed(client, handle, "0")
    from_middle = resumed(client, handle, "3")
    everything = client.get(RESUME, params={"stream": handle})

    assert from_start == whole[1:]
    assert from_middle == whole[4:]
    assert everything.text.count("event: token") == 6  # no Last-Event-ID: from the start
    # A client that has it all is told to stop.
    assert (
        client.get(RESUME, params={"stream": handle}, headers={"Last-Event-ID": "7"}).status_code
        == 204
    )


def test_nobody_back_within_the_window(short: Gateway, standin: StandIn) -> None:
    marker, project = unique("expire"), unique()
    body = ask(content=f"{marker} [[stall=3]]", project=project, resumable=True)

    with short.client() as client:
        with client.stream("POST", STREAM, json=body) as response:
            first = read_some(response, 4)
        # Still asking after the client left; closed once the window (1 s) is over.
        assert not calls_with(standin.calls(), marker)[0]["disconnected"]
        standin.wait_for(lambda calls: calls_with(calls, marker)[0]["disconnected"])
        record = wait_record(client, project)
        late = client.get(
            RESUME, params={"stream": data(first[0])["resume"]}, headers={"Last-Event-ID": "3"}
        )

    assert record["status"] == "cancelled"
    assert record["output"] == "w0 w1 w2 "
    assert record["error_code"] == "client_gone"
    assert late.status_code == 200
    assert late.headers["content-type"].startswith("text/event-stream")
    error = the_error(SSEParser().feed(late.text))
    assert error["code"] == "stream_expired"
    assert "--resume-window" in error["message"]


def test_a_stream_not_resumable_stops_the_model_when_its_client_leaves(
    short: Gateway, standin: StandIn
) -> None:
    marker, project = unique("notresumable"), unique()
    params = {"agent": "llama3", "content": f"{marker} [[stall=2]]", "project": project}

    with short.client() as client:
        with client.stream("GET", STREAM, params={**params, "resumable": "false"}) as response:
            first = read_some(response, 3)
        standin.wait_for(lambda calls: calls_with(calls, marker)[0]["disconnected"])
        record = wait_record(client, project)

    assert "resume" not in data(first[0])
    assert record["status"] == "cancelled"
    assert record["error_code"] is None


@pytest.mark.parametrize("last", ["abc", "-1", "1e3", "٣", "99"])
def test_a_last_event_id_not_of_the_stream_is_an_error_event(
    client: httpx.Client, last: str
) -> None:
    body = ask(content="[[tokens=4]]", project=unique(), resumable=True)
    with client.stream("POST", STREAM, json=body) as response:
        whole, _ = read_events(response)

    late = client.get(
        RESUME,
        params={"stream": data(whole[0])["resume"]},
        headers={b"Last-Event-ID": last.encode()},
    )

    assert late.status_code == 200
    error = the_error(SSEParser().feed(late.text))
    assert error["code"] == "invalid_last_event_id"
    assert error["status"] == 400


def test_an_eventsource_reconnect_with_its_ticket_gets_the_rest(
    client: httpx.Client, gateway: Gateway, standin: StandIn
) -> None:
    marker = unique("ticket")
    ticket = client.post("/api/v1/ai/tickets").json()["ticket"]
    url = f"{STREAM}?" + str(
        httpx.QueryParams(
            {"agent": "llama3", "content": f"{marker} [[tokens=8]] [[delay=0.1]]", "ticket": ticket}
        )
    )

    # What a browser does: the same URL again, with the last id it saw; no key.
    with httpx.Client(base_url=gateway.url, timeout=10) as browser:
        with browser.stream("GET", url) as response:
            first = read_some(response, 3)
        with browser.stream("GET", url, headers={"Last-Event-ID": first[-1].id}) as response:
            rest, _ = read_events(response)
        spent = browser.get(url)

    assert_whole_once(first + rest, 8)
    assert len(calls_with(standin.calls(), marker)) == 1
    assert_error(spent, 401, "unauthorized")  # the ticket asks once


# -- who may resume ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(standin: StandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    folder = tmp_path_factory.mktemp("keyed") / "data"
    with start_gateway(folder, "--ollama", standin.url, "--keepalive", "0.2") as server:
        yield server


def new_key(gateway: Gateway, label: str) -> str:
    with gateway.client() as admin:
        made = admin.post("/api/v1/admin/keys", json={"label": label})
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


def test_only_the_same_key_resumes(keyed: Gateway, tmp_path: Path) -> None:
    mine, theirs = new_key(keyed, unique("mine")), new_key(keyed, unique("theirs"))
    body = ask(content="[[tokens=20]] [[delay=0.1]]", project=unique(), resumable=True)

    with httpx.Client(base_url=keyed.url, timeout=10) as client:
        auth = {"Authorization": f"Bearer {mine}"}
        with client.stream("POST", STREAM, json=body, headers=auth) as response:
            first = read_some(response, 2)
        handle = data(first[0])["resume"]
        other = client.get(
            RESUME,
            params={"stream": handle},
            headers={"Authorization": f"Bearer {theirs}", "Last-Event-ID": "1"},
        )
        guessed = client.get(
            RESUME, params={"stream": handle[:-2] + "xx"}, headers={**auth, "Last-Event-ID": "1"}
        )
        nobody = client.get(RESUME, params={"stream": handle}, headers={"Last-Event-ID": "1"})
        with client.stream(
            "GET", RESUME, params={"stream": handle}, headers={**auth, "Last-Event-ID": "1"}
        ) as response:
            rest, _ = read_events(response)

    assert_error(other, 404, "stream_not_found")
    assert_error(guessed, 404, "stream_not_found")
    assert_error(nobody, 401, "unauthorized")
    assert_whole_once(first + rest, 20)


def test_a_head_of_a_resume_takes_nothing_over(client: httpx.Client) -> None:
    body = ask(content="[[tokens=6]] [[delay=0.1]]", project=unique(), resumable=True)

    with client.stream("POST", STREAM, json=body) as response:
        parser = SSEParser()
        events: list[SSEEvent] = []
        head = None
        for text in response.iter_text():
            events.extend(parser.feed(text))
            if head is None and events:
                handle = data(events[0])["resume"]
                head = client.head(RESUME, params={"stream": handle})

    assert head is not None
    assert head.status_code == 200
    assert_whole_once(events, 6)  # the client streamed on, none missing
