"""What the store keeps on disk, and the few ways it writes it.

    data/usage/2026-11-26-0001.json     a TinyDB file: {"usage": {"1": {...}, "2": {...}}}
    data/usage/journal.jsonl            records not yet in a TinyDB file, one JSON line each
    data/usage/index/2026-11-26-0001.summary
                                        derived: id/date ranges, values and hourly sums of
                                        that file, so queries and stats skip what they need not read
    data/usage/index/2026-11-26-0001.rows
                                        derived: each record's filter and stats fields and where
                                        its document starts in the file, so a query reads rows and
                                        then only the documents it returns

A TinyDB file is only ever replaced whole (temp file, fsync, rename), so a reader
sees the old file or the new one. The journal is only appended to, and fsynced.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import msgspec

from ..records import UsageRecord
from ..stats import Cell, Dist, aggregate

log = logging.getLogger("ollama_host.store")

TABLE = "usage"
JOURNAL = "journal.jsonl"
INDEX = "index"
SEGMENT_NAME = re.compile(r"(\d{4}-\d{2}-\d{2})-(\d{4,})\.json")
# A file lists at most this many distinct values of a field; beyond, it lists none
# (None: "could hold anything"), and queries filtering on that field read the file.
MAX_VALUES = 64
SUMMARY_SECONDS = 3600
# The form of the rows and summaries. A summary of another form is rebuilt from its file at
# startup, with its rows (2: the front, endpoint and upstream joined the filters; 3: the key's
# label and GPU time joined the sums).
INDEX_VERSION = 3

encode = msgspec.json.Encoder().encode
_decode_tables = msgspec.json.Decoder(dict[str, msgspec.Raw]).decode
_decode_table = msgspec.json.Decoder(dict[str, UsageRecord]).decode
decode_line = msgspec.json.Decoder(UsageRecord).decode


class OpenSegment:
    """The newest TinyDB file, whole, in memory: the one the writer still adds to."""

    __slots__ = ("lines", "name", "records", "size")

    def __init__(
        self, name: str, records: list[UsageRecord], lines: list[bytes], size: int
    ) -> None:
        self.name = name
        self.records = records
        self.lines = lines
        self.size = size


class SegmentMeta(msgspec.Struct, array_like=True, kw_only=True):
    """What the store keeps in memory about one closed TinyDB file."""

    name: str
    size: int
    count: int
    min_id: str
    max_id: str
    min_date: str
    max_date: str
    projects: list[str | None] | None
    models: list[str | None] | None
    process_ids: list[str | None] | None
    subprocess_ids: list[str | None] | None
    statuses: list[str | None] | None
    # Added later, at the end and with defaults, so an older summary still reads (and is
    # then rebuilt, its version being older).
    fronts: list[str | None] | None = None
    endpoints: list[str | None] | None = None
    upstreams: list[str | None] | None = None
    version: int = 1


class Row(msgspec.Struct, array_like=True, kw_only=True):
    """A record's filter and stats fields, and where its document lies in its file."""

    id: str
    date: str
    model_name: str
    project: str | None
    process_id: str | None
    subprocess_id: str | None
    status: str
    input_tokens: int | None
    output_tokens: int | None
    total_seconds: float
    ttft_seconds: float | None
    eval_seconds: float | None
    upstream_seconds: float | None
    tokens_estimated: bool
    offset: int
    length: int
    front: str | None = None
    endpoint: str | None = None
    upstream: str | None = None
    key_label: str | None = None
    gpu_seconds: float | None = None
    cost: float | None = None
    load_seconds: float | None = None
    prompt_eval_seconds: float | None = None


class Summary(msgspec.Struct, array_like=True):
    meta: SegmentMeta
    cells: list[Cell]
    dists: list[Dist]


class _SummaryHead(msgspec.Struct, array_like=True):
    meta: SegmentMeta
    cells: msgspec.Raw
    dists: msgspec.Raw


_encode_summary = msgspec.msgpack.Encoder().encode
_decode_summary = msgspec.msgpack.Decoder(Summary).decode
_decode_summary_head = msgspec.msgpack.Decoder(_SummaryHead).decode
_encode_rows = msgspec.msgpack.Encoder().encode
_decode_rows = msgspec.msgpack.Decoder(list[Row]).decode


def segment_key(name: str) -> tuple[str, int]:
    match = SEGMENT_NAME.fullmatch(name)
    assert match is not None, name
    return match[1], int(match[2])


def segment_name(day: str, seq: int) -> str:
    return f"{day}-{seq:04d}.json"


def layout(lines: list[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    """A TinyDB file holding these encoded records as documents 1..n of table "usage",
    and where each document lies in it (offset, length)."""
    parts = [b'{"%s":{' % TABLE.encode()]
    at = len(parts[0])
    spans: list[tuple[int, int]] = []
    for n, line in enumerate(lines, 1):
        head = b'"%d":' % n if n == 1 else b',"%d":' % n
        at += len(head)
        spans.append((at, len(line)))
        at += len(line)
        parts += (head, line)
    parts.append(b"}}")
    return b"".join(parts), spans


def tinydb_bytes(lines: list[bytes]) -> bytes:
    return layout(lines)[0]


def read_segment(path: Path) -> list[UsageRecord]:
    """The records of a TinyDB file, in document order; raises ValueError if unreadable."""
    raw = path.read_bytes()
    try:
        tables = _decode_tables(raw)
        table = tables.get(TABLE)
        return list(_decode_table(table).values()) if table is not None else []
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"{path.name} is not a readable usage file: {exc}") from None


def _values(found: set[str | None]) -> list[str | None] | None:
    return sorted(found, key=lambda v: (v is None, v or "")) if len(found) <= MAX_VALUES else None


def summarize(name: str, size: int, records: list[UsageRecord]) -> Summary:
    ids = [r.id for r in records]
    dates = [r.date for r in records]
    meta = SegmentMeta(
        name=name,
        size=size,
        count=len(records),
        min_id=min(ids),
        max_id=max(ids),
        min_date=min(dates),
        max_date=max(dates),
        projects=_values({r.project for r in records}),
        models=_values({r.model_name for r in records}),
        process_ids=_values({r.process_id for r in records}),
        subprocess_ids=_values({r.subprocess_id for r in records}),
        statuses=_values({r.status for r in records}),
        fronts=_values({r.front for r in records}),
        endpoints=_values({r.endpoint for r in records}),
        upstreams=_values({r.upstream for r in records}),
        version=INDEX_VERSION,
    )
    return Summary(meta, *aggregate(records, SUMMARY_SECONDS))


def summary_path(usage: Path, name: str) -> Path:
    return usage / INDEX / (name.removesuffix(".json") + ".summary")


def rows_path(usage: Path, name: str) -> Path:
    return usage / INDEX / (name.removesuffix(".json") + ".rows")


def read_rows(path: Path) -> list[Row]:
    """Raises OSError or ValueError when the rows are missing or unreadable."""
    try:
        return _decode_rows(path.read_bytes())
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(f"unreadable {path.name}: {exc}") from None


class Documents(NamedTuple):
    """What read_documents found: a record per row, None where there is none to give."""

    records: list[UsageRecord | None]
    # True when a document is damaged: the file is the one the rows describe, and its
    # bytes there do not read as that record.
    damaged: bool


def read_documents(path: Path, rows: list[Row], size: int) -> Documents:
    """The documents these rows of a `size`-byte file point at, read one by one.

    The gateway only ever replaces a file whole, so a file of another size was rewritten
    since the rows were read: its rows are None, and not damaged. Raises OSError.
    """
    found: list[UsageRecord | None] = []
    damaged = False
    with open(path, "rb") as handle:
        fd = handle.fileno()
        if os.fstat(fd).st_size != size:
            return Documents([None] * len(rows), damaged=False)
        for row in rows:
            try:
                record: UsageRecord | None = decode_line(os.pread(fd, row.length, row.offset))
            except (msgspec.DecodeError, msgspec.ValidationError):
                record = None
            if record is None or record.id != row.id:
                damaged = True
                record = None
            found.append(record)
    return Documents(found, damaged)


# Where a document of a TinyDB file starts: after `{"7":` or `,"8":` (a `"` inside a JSON
# string is always escaped, so `,"` never occurs within one).
_DOC_START = re.compile(rb'[{,]\s*"(\d+)"\s*:\s*')


class Salvaged(NamedTuple):
    records: list[UsageRecord]
    spans: list[tuple[int, int]]  # where each record's document lies in the file
    lost: int  # documents that could not be read


def salvage(raw: bytes) -> Salvaged:
    """The documents of a damaged TinyDB file that still read as records, each on its own.

    `lost` counts the documents that do not. Damage that swallowed the start of the next
    document is seen in the documents' numbers (the store numbers them 1, 2, 3...).
    """
    marks = list(_DOC_START.finditer(raw))
    records: list[UsageRecord] = []
    spans: list[tuple[int, int]] = []
    lost = 0
    for i, mark in enumerate(marks):
        start = mark.end()
        end = marks[i + 1].start() if i + 1 < len(marks) else len(raw)
        doc = raw[start:end].rstrip()
        # The last document is followed by the table's and the file's closing braces.
        tries = 3 if i + 1 == len(marks) else 1
        for _ in range(tries):
            try:
                record = decode_line(doc)
            except (msgspec.DecodeError, msgspec.ValidationError):
                doc = doc[:-1].rstrip() if doc.endswith(b"}") else doc
                continue
            records.append(record)
            spans.append((start, len(doc)))
            break
        else:
            lost += 1
            if i + 1 < len(marks):
                lost += max(int(marks[i + 1][1]) - int(mark[1]) - 1, 0)
    if marks:  # damage at the very start took the first documents' numbers with it
        lost += max(int(marks[0][1]) - 1, 0)
    return Salvaged(records, spans, lost)


def salvaged_rows(path: Path) -> tuple[list[Row], int]:
    """Rows for the readable documents of a damaged file, pointing into it as it is,
    and how many documents could not be read. Raises OSError."""
    found = salvage(path.read_bytes())
    rows = [_row(r, span) for r, span in zip(found.records, found.spans, strict=True)]
    return rows, found.lost


def _row(r: UsageRecord, span: tuple[int, int]) -> Row:
    return Row(
        id=r.id,
        date=r.date,
        model_name=r.model_name,
        project=r.project,
        process_id=r.process_id,
        subprocess_id=r.subprocess_id,
        status=r.status,
        input_tokens=r.input_tokens,
        output_tokens=r.output_tokens,
        total_seconds=r.total_seconds,
        ttft_seconds=r.ttft_seconds,
        eval_seconds=r.eval_seconds,
        upstream_seconds=r.upstream_seconds,
        tokens_estimated=r.tokens_estimated,
        offset=span[0],
        length=span[1],
        front=r.front,
        endpoint=r.endpoint,
        upstream=r.upstream,
        key_label=r.key_label,
        gpu_seconds=r.gpu_seconds,
        cost=r.cost,
        load_seconds=r.load_seconds,
        prompt_eval_seconds=r.prompt_eval_seconds,
    )


def read_summary(path: Path) -> Summary:
    return _decode_summary(path.read_bytes())


def read_meta(path: Path) -> SegmentMeta | None:
    """A file's meta from its summary, or None if the summary is missing or unreadable."""
    try:
        meta = _decode_summary_head(path.read_bytes()).meta
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.warning("rebuilding the unreadable summary %s (%s)", path, exc)
        return None
    if meta.version != INDEX_VERSION:
        log.info("rebuilding %s, written by an older version of the gateway", path.name)
        return None
    return meta


def atomic_write(path: Path, data: bytes) -> None:
    """Replace path with data: a reader or a crash sees the old file or the new, whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        # Owner-only, like the journal: records hold prompts and answers.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_segment(
    usage: Path, name: str, records: list[UsageRecord], lines: list[bytes], *, data: bool = True
) -> tuple[SegmentMeta, list[Row]]:
    """Write a closed file (unless data=False: it is on disk as layout(lines) already),
    then its rows and summary. The caller fsyncs the folders."""
    content, spans = layout(lines)
    if data:
        atomic_write(usage / name, content)
    rows = [_row(r, span) for r, span in zip(records, spans, strict=True)]
    atomic_write(rows_path(usage, name), _encode_rows(rows))
    summary = summarize(name, len(content), records)
    atomic_write(summary_path(usage, name), _encode_summary(summary))
    return summary.meta, rows


def reindex(usage: Path, name: str) -> tuple[SegmentMeta, list[Row]] | None:
    """Rebuild a closed file's rows and summary from the file itself.

    A file changed outside the gateway (say, by TinyDB, which writes spaces) is first
    rewritten in the store's compact form, records unchanged, so rows can point into it.
    Raises ValueError if the file is unreadable; returns None if it holds no record.
    """
    path = usage / name
    raw = path.read_bytes()
    records = read_segment(path)
    if not records:
        return None
    lines = [encode(r) for r in records]
    same = layout(lines)[0] == raw
    if not same:
        log.warning("usage file %s was changed outside the gateway; re-indexing it", name)
    return write_segment(usage, name, records, lines, data=not same)


def _aside_name(path: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return path.with_name(f"{path.name}.corrupt-{stamp}")


def keep_aside(path: Path) -> Path:
    """A copy of a damaged file, under a name that says so, before it is repaired in place.

    A hard link: no space needed (the disk may be full), and the repair's atomic replace
    leaves the original bytes to the link. Raises OSError.
    """
    aside = _aside_name(path)
    try:
        os.link(path, aside)
    except FileExistsError:
        pass  # repaired twice within a second: the first copy is the older, keep it
    except OSError:
        shutil.copyfile(path, aside)  # a filesystem without hard links
    return aside


def set_aside(path: Path, why: str) -> Path:
    """Move an unreadable file out of the way under a name that says so; never delete it."""
    aside = _aside_name(path)
    os.replace(path, aside)
    log.error(
        "USAGE FILE UNREADABLE: %s. Moved it aside to %s; nothing was deleted. "
        "The gateway goes on without the records in it.",
        why,
        aside,
    )
    return aside
