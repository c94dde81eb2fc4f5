"""Which models one upstream holds, watched: what its /api/ps (or /slots) shows at each health
check, and again right after a call that made it load a model, as a short history of loads,
unloads and reloads; and, for a call about to be sent, whether it will make the server load.

A server reloads a model that is loaded with another context than a call asks for (Ollama's
`num_ctx`), so a call that names a context is cold when the loaded one differs. One that
names none takes the server's default, which the gateway does not know: it counts as warm.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

from calls.models import canonical
from calls.types import LoadedModel
from calls.upstream import ResidencyEvent, UpstreamResidency

# Events kept per upstream (the dashboard shows the last hour of a busy server in fewer).
EVENTS = 512


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Residency:
    """One upstream's models in memory, as last seen, and how they changed."""

    def __init__(self) -> None:
        # Canonical name -> (the server's own name, the context it is loaded with).
        self.models: dict[str, tuple[str, int | None]] = {}
        self.events: deque[ResidencyEvent] = deque(maxlen=EVENTS)
        self.seen = False

    def see(self, entries: list[LoadedModel]) -> set[str]:
        """What the server lists as loaded now; the canonical names that left since."""
        now = {canonical(e.name): (e.name, e.loaded_context) for e in entries}
        at = _now()
        gone = set(self.models) - set(now)
        if self.seen:
            for key in sorted(gone):
                name, _ = self.models[key]
                self.events.append(ResidencyEvent(at=at, model=name, event="unloaded"))
        for key, (name, context) in now.items():
            before = self.models.get(key)
            if before is None:
                self.events.append(
                    ResidencyEvent(at=at, model=name, event="loaded", context=context)
                )
            elif before[1] != context and context is not None and before[1] is not None:
                self.events.append(
                    ResidencyEvent(at=at, model=name, event="reloaded", context=context)
                )
        self.models = now
        self.seen = True
        return gone

    def cold(self, key: str, context: int | None) -> bool:
        """Whether a call for `key` (asking for `context`, if it names one) makes the server
        load the model, as far as the last reading tells."""
        held = self.models.get(key)
        if held is None:
            return True
        return context is not None and held[1] is not None and held[1] != context

    def view(self, name: str) -> UpstreamResidency:
        return UpstreamResidency(
            name=name,
            loaded=sorted(model for model, _ in self.models.values()),
            events=list(self.events),
        )
