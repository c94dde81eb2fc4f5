"""The fair queue in front of the upstreams: who waits (`Place`), in what order (`Line`), and
the slots and order shared through Redis by several gateways (`shared`)."""

from __future__ import annotations

from .line import Line, Waiter
from .place import PRIORITIES, Place, Priority, current, priority_of

__all__ = ["PRIORITIES", "Line", "Place", "Priority", "Waiter", "current", "priority_of"]
