"""The TinyDB store, the default: usage records in TinyDB files in the data folder, with a
journal for durability (`store`), their files and indexes (`files`), reading and stats over
them (`reading`), repairs and the journal's replay (`recovery`), retention (`retention`), and
the import of records a full disk refused at shutdown (`import_spill`; the spill itself
is store/spill.py)."""

from __future__ import annotations

from .store import TinyDBStore

__all__ = ["TinyDBStore"]
