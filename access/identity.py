"""Who is asking: credentials in, a Caller out (or 401), and whether they may use a model."""

from __future__ import annotations

import msgspec

from calls.errors import CallError, unauthorized

from .keys import ADMIN, ANYONE, Access, ApiKey, fingerprint, key_id_of


class Caller(msgspec.Struct, frozen=True):
    """Who is asking: a key's holder, the admin (the page's playground), or anyone."""

    key: ApiKey | None = None
    admin: bool = False
    # A fingerprint of the credential presented, for the record.
    fingerprint: str | None = None

    @property
    def label(self) -> str | None:
        """What the record calls this caller: the key's label, "admin", or nothing."""
        if self.key is not None:
            return self.key.label
        return "admin" if self.admin else None


class Credentials(msgspec.Struct, frozen=True):
    """What a request brought to prove who it is; each front fills it in its own way."""

    bearer: str | None = None
    session: str | None = None
    ticket: str | None = None
    # The seed's body field: a key once keys exist, a free label before.
    user_key: str | None = None


async def identify(access: Access, credentials: Credentials) -> Caller:
    """Who is asking, or CallError 401. Asking needs a key once any key exists."""
    holder = None
    if credentials.ticket is not None:
        holder = await access.tickets.redeem(credentials.ticket)
    caller = await _identify(access, credentials, holder)
    if caller.fingerprint is None and credentials.user_key:
        # No key of its own (the admin, or anyone while no key exists): a seed client's
        # free-form user_key still groups its calls, as a fingerprint.
        return msgspec.structs.replace(
            caller, fingerprint=fingerprint(access.secret, credentials.user_key)
        )
    return caller


async def _identify(access: Access, credentials: Credentials, holder: str | None) -> Caller:
    ring = access.keys
    if credentials.ticket is not None:
        if holder is None:
            raise unauthorized("this stream ticket is unknown, used or expired; get a new one")
        if holder == ADMIN:
            return Caller(admin=True)
        if holder == ANYONE:
            if ring.active:
                raise unauthorized("asking needs an API key now; get a ticket with your key")
            return Caller()
        # The ticket may come from another gateway, for a key made there a moment ago.
        key = ring.get(holder) or await ring.learn(holder)
        if key is None or key.revoked:
            raise unauthorized("the key this ticket was issued to has been revoked")
        return Caller(key=key, fingerprint=key.fingerprint)
    admin = access.admin
    if credentials.session and admin.check_session(credentials.session):
        return Caller(admin=True)
    if credentials.bearer and admin.check_token(credentials.bearer):
        return Caller(admin=True)
    presented = credentials.bearer or credentials.user_key
    found = ring.verify(presented) if presented else None
    # A key this gateway has not read yet (made through another gateway a moment ago) is
    # read now. Without this, a gateway that knew no key let it in as anyone's, without the
    # key's limits or its name on the record.
    if (
        found is None
        and presented
        and (key_id := key_id_of(presented)) is not None
        and ring.get(key_id) is None
        and await ring.learn(key_id) is not None
    ):
        found = ring.verify(presented)
    if not ring.active:
        return Caller()
    if found is None:
        raise unauthorized(
            "this API key is not valid or has been revoked"
            if presented
            else "asking needs an API key: send `Authorization: Bearer <key>`, "
            "or the key as user_key"
        )
    return Caller(key=found, fingerprint=found.fingerprint)


def check_model(caller: Caller, model: str) -> None:
    """CallError 403 unless the caller may use `model`."""
    if caller.key is not None and not caller.key.allows(model):
        raise CallError(403, "model_not_allowed", f"this key may not use the model {model!r}")


def holder(caller: Caller) -> str:
    """Who `caller` is, as a ticket (or a resumable stream) names its holder: a key's id,
    ADMIN, or ANYONE."""
    return caller.key.id if caller.key else (ADMIN if caller.admin else ANYONE)


async def ticket(access: Access, caller: Caller) -> str:
    """A single-use ticket that lets an EventSource stream as `caller`."""
    return await access.tickets.issue(holder(caller))
