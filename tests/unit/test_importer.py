"""The ratings importer on small files written by each test: formats, timestamps,
rejects with their reasons, counts, deterministic ids and contract validity."""

from __future__ import annotations

import csv
import io
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelpulse.contract import Contract
from reelpulse.importer import (
    ImportFormatError,
    ImportSummary,
    LineRejected,
    Reason,
    default_rejects_path,
    import_ratings,
    parse_rating,
    parse_ratings,
    parse_timestamp,
)
from reelpulse.settings import Settings

ML_1M_FIRST = 978300760  # 2000-12-31T22:12:40Z, first line of ml-1m ratings.dat


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract(Settings(_env_file=None).schemas_dir)


def write(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return path


def run(
    path: Path, contract: Contract, **options: Any
) -> tuple[ImportSummary, list[tuple[str, dict[str, Any]]]]:
    options.setdefault("known_titles", frozenset())
    options.setdefault("published_ms", 0)
    summary, events = import_ratings(path, contract, **options)
    return summary, list(events)


def ratings(events: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [record for event_type, record in events if event_type == "rating"]


def rejects(summary: ImportSummary) -> list[dict[str, str]]:
    with summary.rejects_path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# Formats


def test_csv_with_header(tmp_path: Path, contract: Contract) -> None:
    path = write(
        tmp_path,
        "ratings.csv",
        "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n",
    )
    summary, events = run(path, contract)
    assert summary.delimiter == ","
    assert summary.header == ("userId", "movieId", "rating", "timestamp")
    assert [(r["envelope"]["user_id"], r["title_id"], r["rating"]) for r in ratings(events)] == [
        ("1", "31", 2.5),
        ("1", "1029", 3.0),
    ]
    assert ratings(events)[0]["envelope"]["event_time"] == 1260759144000
    assert (summary.lines_read, summary.imported, summary.rejected_total) == (2, 2, 0)


def test_tsv_without_header(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "ratings.tsv", "u7\ttt0111161\t4.5\t1577872800000\n")
    summary, events = run(path, contract)
    assert summary.delimiter == "\t"
    assert summary.header is None
    [record] = ratings(events)
    assert (record["envelope"]["user_id"], record["title_id"]) == ("u7", "tt0111161")
    assert record["envelope"]["event_time"] == 1577872800000


def test_movielens_1m_double_colon(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "ratings.dat", f"1::1193::5::{ML_1M_FIRST}\n1::661::3::978302109\n")
    summary, events = run(path, contract, title_prefix="ml-")
    assert summary.delimiter == "::"
    assert [r["title_id"] for r in ratings(events)] == ["ml-1193", "ml-661"]
    assert ratings(events)[0]["envelope"]["event_time"] == ML_1M_FIRST * 1000


def test_header_in_another_spelling_and_order_with_extra_column(tmp_path: Path, contract: Contract) -> None:
    text = "ts,rating,item_id,comment,user_id\n2020-01-01T00:00:00Z,4,i9,nice,u1\n"
    path = write(tmp_path, "export.csv", text)
    _, events = run(path, contract)
    [record] = ratings(events)
    assert (record["envelope"]["user_id"], record["title_id"], record["rating"]) == ("u1", "i9", 4)


def test_quoted_fields_crlf_and_byte_order_mark(tmp_path: Path, contract: Contract) -> None:
    text = b'\xef\xbb\xbfuser,item,rating,timestamp\r\n"1","a, b","3.5","10"\r\n'
    path = write(tmp_path, "excel.csv", text)
    summary, events = run(path, contract)
    assert summary.header == ("user", "item", "rating", "timestamp")
    assert ratings(events)[0]["title_id"] == "a, b"


# Timestamps


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        (str(ML_1M_FIRST), ML_1M_FIRST * 1000),
        (str(ML_1M_FIRST * 1000 + 123), ML_1M_FIRST * 1000 + 123),
        (f"{ML_1M_FIRST}.5", ML_1M_FIRST * 1000 + 500),
        ("2000-12-31T22:12:40Z", ML_1M_FIRST * 1000),
        ("2000-12-31T23:12:40+01:00", ML_1M_FIRST * 1000),
        ("2000-12-31T22:12:40.250+00:00", ML_1M_FIRST * 1000 + 250),
        ("2000-12-31 22:12:40", ML_1M_FIRST * 1000),  # naive means UTC
        ("2000-12-31", (ML_1M_FIRST - 22 * 3600 - 12 * 60 - 40) * 1000),
    ],
)
def test_timestamps(text: str, ms: int) -> None:
    assert parse_timestamp(text) == ms


def test_epoch_seconds_and_milliseconds_told_apart_by_magnitude() -> None:
    assert parse_timestamp("99999999999") == 99999999999000
    assert parse_timestamp("100000000000") == 100000000000


@pytest.mark.parametrize("text", ["yesterday", "2020-13-01T00:00:00", "-5", "1e9", "", "999999999999999999"])
def test_bad_timestamps(text: str) -> None:
    with pytest.raises(LineRejected) as rejected:
        parse_timestamp(text)
    assert rejected.value.reason is Reason.BAD_TIMESTAMP


@pytest.mark.parametrize(("text", "value"), [("0.5", 0.5), ("4", 4.0), ("3.50", 3.5), ("5.0", 5.0)])
def test_ratings_in_half_steps(text: str, value: float) -> None:
    assert parse_rating(text) == value


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("0", Reason.RATING_OUT_OF_RANGE),
        ("5.5", Reason.RATING_OUT_OF_RANGE),
        ("10", Reason.RATING_OUT_OF_RANGE),
        ("3.3", Reason.RATING_OUT_OF_RANGE),
        ("four", Reason.BAD_RATING),
        ("nan", Reason.BAD_RATING),
        ("-1", Reason.BAD_RATING),
        ("4,5", Reason.BAD_RATING),
        ("", Reason.BAD_RATING),
    ],
)
def test_bad_ratings(text: str, reason: Reason) -> None:
    with pytest.raises(LineRejected) as rejected:
        parse_rating(text)
    assert rejected.value.reason is reason


# Rejects

GOOD = "1,10,4.0,1260759144"


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (b"", Reason.EMPTY),
        (b"   ", Reason.EMPTY),
        (b"1,10,4.0", Reason.COLUMN_COUNT),
        (b"1,10,4.0,1260759144,extra", Reason.COLUMN_COUNT),
        (b",10,4.0,1260759144", Reason.MISSING_USER),
        (b"1, ,4.0,1260759144", Reason.MISSING_ITEM),
        (b"1,10,great,1260759144", Reason.BAD_RATING),
        (b"1,10,7,1260759144", Reason.RATING_OUT_OF_RANGE),
        (b"1,10,4.0,last tuesday", Reason.BAD_TIMESTAMP),
        (b"1,10\xff,4.0,1260759144", Reason.ENCODING),
    ],
)
def test_each_malformed_line_lands_in_rejects_with_its_reason(
    tmp_path: Path, contract: Contract, bad: bytes, reason: Reason
) -> None:
    path = write(tmp_path, "ratings.csv", b"\n".join([GOOD.encode(), bad, GOOD.encode()]) + b"\n")
    summary, events = run(path, contract)
    assert summary.rejected == Counter({reason.value: 1})
    assert (summary.lines_read, summary.imported) == (3, 2)
    assert len(ratings(events)) == 2
    [row] = rejects(summary)
    assert row["line_number"] == "2"
    assert row["reason"].startswith(f"{reason.value}: ")
    assert row["line"] == bad.decode("utf-8", errors="replace")


def test_rejects_line_numbers_count_the_header(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "ratings.csv", f"userId,movieId,rating,timestamp\n{GOOD}\n1,2,9,3\n")
    summary, _ = run(path, contract)
    assert [row["line_number"] for row in rejects(summary)] == ["3"]
    assert summary.lines_read == 2


def test_clean_import_still_writes_a_rejects_file_with_only_its_header(
    tmp_path: Path, contract: Contract
) -> None:
    path = write(tmp_path, "ratings.csv", f"{GOOD}\n")
    stale = default_rejects_path(path)
    stale.write_text("old rejects\n")
    summary, _ = run(path, contract)
    assert summary.rejects_path == stale
    assert stale.read_text().splitlines() == ["line_number,reason,line"]


def test_explicit_rejects_path(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "ratings.csv", f"{GOOD}\nbroken,line\n")
    summary, _ = run(path, contract, rejects_path=tmp_path / "out" / "bad.csv")
    assert len(rejects(summary)) == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("just-one-column\n", "delimiter"),
        ("user,item,rating\n1,2,3\n", "lacks timestamp"),
        ("user,userId,item,rating,ts\n", "user column twice"),
    ],
)
def test_unrecognisable_file_fails_before_any_event(
    tmp_path: Path, contract: Contract, text: str, problem: str
) -> None:
    path = write(tmp_path, "ratings.csv", text)
    with pytest.raises(ImportFormatError, match=problem):
        run(path, contract)


def test_rejects_file_may_not_overwrite_the_input(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "ratings.csv", f"{GOOD}\n")
    with pytest.raises(ImportFormatError, match="overwrite"):
        run(path, contract, rejects_path=path)
    assert path.read_text() == f"{GOOD}\n"


def test_empty_file_imports_nothing(tmp_path: Path, contract: Contract) -> None:
    summary, events = run(write(tmp_path, "ratings.csv", ""), contract)
    assert (events, summary.lines_read) == ([], 0)


good_lines = st.builds(
    "{},{},{},{}".format,
    st.integers(1, 50),
    st.integers(1, 20),
    st.sampled_from(["0.5", "1", "2.5", "4.0", "5"]),
    st.sampled_from(["1260759144", "1260759144000", "2020-02-29T12:00:00+05:30"]),
)
bad_lines = st.sampled_from(["", "1,2", "1,2,x,3", "1,2,6,3", "1,2,3,never", ",2,3,4", "1,,3,4"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(good_lines, bad_lines), min_size=1, max_size=30))
def test_counts_add_up(lines: list[str]) -> None:
    contract = Contract(Settings(_env_file=None).schemas_dir)
    with tempfile.TemporaryDirectory() as directory:
        summary, events = run(write(Path(directory), "r.csv", "\n".join(lines) + "\n"), contract)
        assert summary.lines_read == len(lines)
        assert summary.lines_read == summary.imported + summary.rejected_total
        assert len(ratings(events)) == summary.imported
        assert len(rejects(summary)) == summary.rejected_total


# Events


def test_deterministic_event_ids(tmp_path: Path, contract: Contract) -> None:
    text = f"{GOOD}\n2,11,3.5,1260759145\n"
    first = run(write(tmp_path, "a.csv", text), contract)[1]
    moved = run(write(tmp_path, "copy-elsewhere.csv", text), contract)[1]
    other = run(write(tmp_path, "b.csv", text + "3,12,1,1\n"), contract)[1]
    prefixed = run(tmp_path / "a.csv", contract, title_prefix="ml-")[1]

    def ids(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
        return [r["envelope"]["event_id"] for r in ratings(events)]

    assert ids(first) == ids(moved)
    assert len(set(ids(first))) == 2
    assert not set(ids(first)) & set(ids(other))
    assert not set(ids(first)) & set(ids(prefixed))
    sessions = [r["envelope"]["session_id"] for r in ratings(first)]
    assert sessions == [r["envelope"]["session_id"] for r in ratings(moved)]
    assert sessions[0] != sessions[1]


def test_source_id_keeps_ids_when_a_file_grows(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "r.csv", f"{GOOD}\n")
    before = ratings(run(path, contract, source_id="ml-25m")[1])
    path.write_text(f"{GOOD}\n2,11,3.5,1260759145\n")
    after = ratings(run(path, contract, source_id="ml-25m")[1])
    assert after[0]["envelope"]["event_id"] == before[0]["envelope"]["event_id"]


def test_titles_come_once_before_their_first_rating_and_known_ones_not_at_all(
    tmp_path: Path, contract: Contract
) -> None:
    path = write(tmp_path, "r.dat", "1::10::4::1\n1::20::4::2\n2::10::3::3\n2::30::1::4\n")
    summary, events = run(path, contract, title_prefix="ml-", known_titles={"ml-30"})
    assert [(t, r["title_id"]) for t, r in events] == [
        ("title", "ml-10"),
        ("rating", "ml-10"),
        ("title", "ml-20"),
        ("rating", "ml-20"),
        ("rating", "ml-10"),
        ("rating", "ml-30"),
    ]
    assert events[0][1] == {
        "title_id": "ml-10",
        "event_time": 0,
        "name": "Imported title 10",
        "kind": "MOVIE",
        "genres": [],
        "duration_s": None,
        "release_year": None,
    }
    assert summary.new_titles == 2


def test_envelope_placeholders_and_prefixes(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "r.csv", f"{GOOD}\n")
    [record] = ratings(run(path, contract, user_prefix="ml-user-")[1])
    envelope = record["envelope"]
    assert envelope["user_id"] == envelope["profile_id"] == "ml-user-1"
    assert envelope["device"]["device_type"] == "WEB"
    assert envelope["device"]["device_id"].startswith("import:")
    assert (envelope["device"]["os"], envelope["device"]["app_version"]) == ("import", "import")
    assert (envelope["country"], envelope["client_ip"]) == ("ZZ", "0.0.0.0")
    assert record["source"] == "IMPORT"


def test_every_record_passes_the_contract_and_encodes(tmp_path: Path, contract: Contract) -> None:
    text = "userId,movieId,rating,timestamp\n" + "".join(
        f"{u},{m},{(u + m) % 10 / 2 + 0.5},{1260759144 + u * m}\n" for u in range(1, 6) for m in range(1, 6)
    )
    _, events = run(write(tmp_path, "r.csv", text), contract)
    assert len(events) == 25 + 5
    for event_type, record in events:
        contract[event_type].check(record)
        fastavro.schemaless_writer(io.BytesIO(), contract[event_type].parsed, record)


def test_lines_are_streamed_not_loaded(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "r.csv", f"{GOOD}\n" * 10_000)
    summary = ImportSummary(path, tmp_path / "rejects.csv")
    rows = parse_ratings(path, rejects_path=summary.rejects_path, summary=summary)
    next(rows)
    assert summary.bytes_read == len(GOOD) + 1
    rows.close()


def test_summary_line(tmp_path: Path, contract: Contract) -> None:
    path = write(tmp_path, "ratings.csv", f"{GOOD}\n\n1,2,9,3\n")
    summary, _ = run(path, contract)
    assert summary.line() == (
        "ratings.csv: 3 lines read, 1 imported, 2 rejected (empty 1, rating_out_of_range 1), "
        f"1 new titles; rejects in {summary.rejects_path}"
    )
