"""store/postgres/rollups.py without a database: how a batch finds its hours and days.

The rollups' sums themselves are checked against the records by the store contract suite
(tests/test_store_contract.py), on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from store.postgres.database import TABLES
from store.postgres.rollups import DAY, HOUR, _prefix, _start, dims_of
from store.postgres.store import COLUMNS
from store.records import iso
from tests.store_helpers import record

MOMENTS = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
)


@given(MOMENTS, st.integers(min_value=0, max_value=DAY * 10**6 - 1))
def test_dates_whose_text_shares_an_hour_or_a_day_share_its_start(
    moment: datetime, micros: int
) -> None:
    """add() looks starts up by the text's prefix; a prefix must never join two hours."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    other = day + timedelta(microseconds=micros)
    a, b = iso(moment), iso(other)
    for seconds in (HOUR, DAY):
        if _prefix(a, seconds) == _prefix(b, seconds):
            assert _start(a, seconds) == _start(b, seconds)
    assert _prefix(a, DAY) == _prefix(b, DAY)
    assert _start(a, DAY) == day


def test_a_date_in_another_form_is_its_own_key() -> None:
    for date in ("2026-11-30T23:40:19+02:00", "2026-11-30T23:40:19", "2026-11-30T23:40:19Z"):
        assert _prefix(date, HOUR) == date
    assert _start("2026-11-30T23:40:19+02:00", HOUR) == datetime(2026, 11, 30, 21, tzinfo=UTC)


def test_dims_are_the_records_own_values_with_nul_replaced() -> None:
    plain = record(1, project="p1")
    odd = record(2, project="a\x00b")

    assert dims_of(plain)[1] == "p1"
    assert dims_of(odd)[1] == "a\ufffdb"


def test_the_start_checks_every_usage_column_the_writer_fills() -> None:
    # A column the schema check does not know of is one someone may drop unnoticed: the
    # start goes on and every record is then refused (key_label and the GPU columns were).
    assert {name for name, _, _ in COLUMNS} | {"doc"} == TABLES["usage"]
