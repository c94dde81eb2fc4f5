"""access/identity.py: who is asking (keys, the admin, tickets) and which models they may use;
on its own, and through the seed's API in process.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import pytest

from access.identity import Caller, Credentials, check_model, identify, ticket
from access.keys import ADMIN, ANYONE, Access, KeyLimits
from calls.errors import CallError
from tests.asgi import Keyed, Local, gateway_log
from tests.helpers import aonly_record, ask, assert_error, unique

pytestmark = pytest.mark.anyio

SYNC = "/api/v1/ai/ask_sync"
STREAM = "/api/v1/ai/ask_async"
KEYS = "/api/v1/admin/keys"
TOKEN = "identity-admin-token"


@pytest.fixture
def access(tmp_path: Path) -> Access:
    access, _ = Access.open(tmp_path, TOKEN)
    return access


async def refused(access: Access, credentials: Credentials) -> CallError:
    with pytest.raises(CallError) as raised:
        await identify(access, credentials)
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")
    assert raised.value.headers == {"WWW-Authenticate": "Bearer"}
    return raised.value


# -- identify, on its own --------------------------------------------------------------


async def test_before_any_key_exists_anyone_may_ask(access: Access) -> None:
    assert await identify(access, Credentials()) == Caller()
    assert await identify(access, Credentials(bearer="whatever")) == Caller()


async def test_a_free_user_key_groups_calls_as_a_fingerprint(access: Access) -> None:
    caller = await identify(access, Credentials(user_key="alice"))

    assert caller.fingerprint is not None
    assert caller.fingerprint.startswith("fp_")
    assert caller.fingerprint == (await identify(access, Credentials(user_key="alice"))).fingerprint
    assert caller.fingerprint != (await identify(access, Credentials(user_key="bob"))).fingerprint
    assert (caller.key, caller.admin, caller.label) == (None, False, None)


async def test_the_admin_token_and_session_make_the_admin(access: Access) -> None:
    by_token = await identify(access, Credentials(bearer=TOKEN))
    by_session = await identify(access, Credentials(session=access.admin.session))

    assert by_token.admin
    assert by_session.admin
    assert by_token.label == "admin"


async def test_once_a_key_exists_asking_needs_one(access: Access) -> None:
    key, plain = await access.keys.create("team", None, KeyLimits())

    nothing = await refused(access, Credentials())
    wrong = await refused(access, Credentials(bearer=plain[:-4] + "AAAA"))
    forged_session = await refused(access, Credentials(session="forged"))
    by_bearer = await identify(access, Credentials(bearer=plain))
    by_user_key = await identify(access, Credentials(user_key=plain))
    admin = await identify(access, Credentials(bearer=TOKEN))

    assert "asking needs an API key" in nothing.message
    assert "not valid" in wrong.message
    assert "asking needs an API key" in forged_session.message
    assert by_bearer == by_user_key == Caller(key=key, fingerprint=key.fingerprint)
    assert by_bearer.label == "team"
    assert admin.admin


async def test_a_ticket_stands_for_whoever_it_was_issued_to(access: Access) -> None:
    key, _ = await access.keys.create("team", None, KeyLimits())
    as_key = await ticket(access, Caller(key=key, fingerprint=key.fingerprint))
    as_admin = await ticket(access, Caller(admin=True))

    assert await identify(access, Credentials(ticket=as_key)) == Caller(
        key=key, fingerprint=key.fingerprint
    )
    assert await identify(access, Credentials(ticket=as_admin)) == Caller(admin=True)
    used = await refused(access, Credentials(ticket=as_key))
    assert "unknown, used or expired" in used.message


async def test_a_ticket_of_anyone_stops_working_once_keys_exist(access: Access) -> None:
    early = await ticket(access, Caller())
    late = await ticket(access, Caller())
    assert await identify(access, Credentials(ticket=early)) == Caller()

    await access.keys.create("team", None, KeyLimits())

    assert "needs an API key now" in (await refused(access, Credentials(ticket=late))).message


async def test_a_ticket_of_a_revoked_key_is_refused(access: Access) -> None:
    key, _ = await access.keys.create("team", None, KeyLimits())
    issued = await ticket(access, Caller(key=key))

    await access.keys.update(msgspec.structs.replace(key, revoked="2025-01-01T00:00:00+00:00"))

    assert "revoked" in (await refused(access, Credentials(ticket=issued))).message


async def test_tickets_are_issued_to_the_key_the_admin_or_anyone(access: Access) -> None:
    key, _ = await access.keys.create("team", None, KeyLimits())

    holders = [
        await access.tickets.redeem(await ticket(access, caller))
        for caller in (Caller(key=key), Caller(admin=True), Caller())
    ]

    assert holders == [key.id, ADMIN, ANYONE]


async def test_check_model_refuses_a_model_the_key_may_not_use(access: Access) -> None:
    key, _ = await access.keys.create("qwen only", ["qwen"], KeyLimits())

    check_model(Caller(key=key), "qwen:latest")
    check_model(Caller(admin=True), "llama3")
    check_model(Caller(), "llama3")
    with pytest.raises(CallError) as raised:
        check_model(Caller(key=key), "llama3")
    with pytest.raises(CallError):
        check_model(Caller(key=key), "qwen:7b")  # another model of the family: not allowed

    assert (raised.value.status, raised.value.code) == (403, "model_not_allowed")
    assert "'llama3'" in raised.value.message


# -- through the seed's API ------------------------------------------------------------


async def test_asking_needs_a_key_once_keys_exist(keyed: Keyed) -> None:
    async with keyed.client(None) as anonymous:
        response = await anonymous.post(SYNC, json=ask())

    assert_error(response, 401, "unauthorized")


@pytest.mark.parametrize("how", ["bearer", "user_key"])
async def test_a_valid_key_may_ask_and_is_recorded_by_label(keyed: Keyed, how: str) -> None:
    project, key = unique(), keyed.keys["team"]["key"]
    body = ask(project=project, **({"user_key": key} if how == "user_key" else {}))
    async with keyed.client("team" if how == "bearer" else None) as client:
        response = await client.post(SYNC, json=body)

    assert response.status_code == 200, response.text
    async with keyed.local.client() as admin:
        record = await aonly_record(admin, project)
    assert (record["key_id"], record["key_label"]) == (keyed.keys["team"]["info"]["id"], "team")
    assert record["user"] == keyed.keys["team"]["info"]["fingerprint"]
    assert key not in json.dumps(record)


async def test_a_wrong_key_is_refused(keyed: Keyed) -> None:
    fake = keyed.keys["team"]["key"][:-4] + "AAAA"
    async with keyed.client(None) as client:
        response = await client.post(SYNC, json=ask(), headers={"Authorization": f"Bearer {fake}"})

    assert_error(response, 401, "unauthorized")


async def test_a_revoked_key_is_refused(keyed: Keyed) -> None:
    async with keyed.local.client() as admin:
        revoked = await admin.delete(f"{KEYS}/{keyed.keys['revoked']['info']['id']}")
    async with keyed.client("revoked") as client:
        response = await client.post(SYNC, json=ask())

    assert revoked.json()["revoked"]
    assert_error(response, 401, "unauthorized")


async def test_a_key_may_be_limited_to_models(keyed: Keyed) -> None:
    async with keyed.client("qwen-only") as client:
        refused = await client.post(SYNC, json=ask("llama3"))
        allowed = await client.post(SYNC, json=ask("qwen"))

    assert_error(refused, 403, "model_not_allowed")
    assert allowed.status_code == 200


async def test_eventsource_uses_a_single_use_ticket(keyed: Keyed) -> None:
    async with keyed.client("team") as client:
        issued = (await client.post("/api/v1/ai/tickets")).json()["ticket"]
    params = {"agent": "llama3", "content": "hi [[tokens=2]]", "ticket": issued}
    async with keyed.client(None) as browser:
        first = await browser.get(STREAM, params=params)
        body = first.text
        again = await browser.get(STREAM, params=params)
        without = await browser.get(STREAM, params={"agent": "llama3", "content": "hi"})

    assert first.status_code == 200
    assert "event: done" in body
    assert_error(again, 401, "unauthorized")
    assert_error(without, 401, "unauthorized")


async def test_revoking_the_last_key_does_not_reopen_asking(
    local: Local, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with local.client() as admin:
        made = (await admin.post(KEYS, json={"label": "only"})).json()
        await admin.delete(f"{KEYS}/{made['info']['id']}")
        async with local.client(admin=False) as anyone:
            response = await anyone.post(SYNC, json=ask())

    assert_error(response, 401, "unauthorized")
    await local.gateway.store.flush()
    # As test_security.py checked of every key it saw: never on disk, never in the log.
    for path in local.data.rglob("*"):
        if path.is_file():
            assert made["key"] not in path.read_text(errors="replace")
    assert made["key"] not in gateway_log(caplog.records)
