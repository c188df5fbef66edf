"""Backfill of ratings from a file: lines -> validated rows -> ``rating`` and ``title`` events.

``reelpulse import ratings FILE`` reads a file of ``user, item, rating, timestamp`` and
turns every good line into a ``rating`` event; items the catalog does not know yet get a
placeholder ``title`` record first. This module is pure: it reads the file and writes the
rejects file, and hands ``(event_type, record)`` pairs to whoever produces them.

The file
    Delimiter ``::`` (MovieLens ml-1m ``ratings.dat``), tab or comma, detected on the
    first non-blank line. That line is a header when any of its fields is a known column
    name (``userId``/``user_id``/``user``, ``movieId``/``item_id``/``item``/``title_id``,
    ``rating``, ``timestamp``/``ts``; case, ``_`` and ``-`` ignored); a header may name
    extra columns, which are ignored. Without a header the columns are exactly user,
    item, rating, timestamp. The file is streamed line by line in bounded memory; the
    only state that grows is the set of new title ids (about 60k for MovieLens 25M).

Values
    rating
        0.5 to 5.0 in steps of 0.5. Other scales (1-10, 0-100) are rejected, not
        rescaled: convert such a file before importing it.
    timestamp
        Epoch seconds, or epoch milliseconds when the value is 1e11 or more (so
        milliseconds before 1973-03-03 would be read as seconds), or ISO-8601; an
        ISO time without an offset is UTC. A value of digits only is always epoch (so
        the ISO basic date ``20200101`` is not supported).

Error policy
    A file whose format cannot be recognised (no delimiter on the first line, a header
    without the four columns) raises :class:`ImportFormatError` before any event. A bad
    line (empty, wrong column count, missing user or item, non-numeric or out-of-range
    rating, bad timestamp, invalid UTF-8) is written to the rejects file (CSV
    ``line_number,reason,line``; reason is ``<code>: <detail>``) and counted in
    :class:`ImportSummary` by code; the other lines are imported. The rejects file is
    always rewritten, with only its header when nothing was rejected. Every record is checked
    against the contract; a failure there is a bug of this module and raises
    :class:`~reelpulse.errors.SchemaViolation`.

Identity and guarantee
    ``event_id`` is ``uuid5(batch, line number)`` where the batch is ``uuid5`` of the
    file's identity (``sha256:<hex>`` of its content unless a ``source_id`` is given) and
    the two prefixes. Re-importing the same file with the same options yields the same
    event ids, so an interrupted import can simply be run again (at-least-once, with
    duplicates removed downstream by ``event_id``). Changing a byte of the file changes
    every id: pass a stable ``source_id`` to keep ids for a file that grows by appending.

Mapping to the envelope
    ``user_id`` is ``user_prefix`` + the user as given (default prefix: none) and
    ``profile_id`` is the same value (one profile per imported account). ``title_id`` is
    ``title_prefix`` + the item as given. ``session_id`` is ``uuid5(batch, user)``: one
    import session per account and file. The device is ``import:<batch>`` of type WEB
    with os and app_version ``import``; country ``ZZ`` (ISO 3166 user-assigned code,
    conventionally "unknown"); client_ip ``0.0.0.0``; source ``IMPORT``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Container, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

from reelpulse.contract import Contract
from reelpulse.errors import ReelpulseError

Event = tuple[str, dict[str, Any]]

# Fixed forever: changing it changes every event id of every import.
IMPORT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:reelpulse:import:ratings")
COUNTRY_UNKNOWN = "ZZ"
CLIENT_IP_UNKNOWN = "0.0.0.0"
DELIMITERS = ("::", "\t", ",")
EPOCH_MS_FROM = 10**11
MAX_EVENT_MS = 253_402_300_800_000  # 10000-01-01T00:00:00Z
MIN_RATING, MAX_RATING = 0.5, 5.0
ROLES = ("user", "item", "rating", "timestamp")
COLUMN_NAMES = {
    "user": frozenset({"user", "userid", "uid"}),
    "item": frozenset({"item", "itemid", "movie", "movieid", "titleid"}),
    "rating": frozenset({"rating", "stars"}),
    "timestamp": frozenset({"timestamp", "ts", "time", "eventtime"}),
}
REJECTS_COLUMNS = ("line_number", "reason", "line")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BOM = b"\xef\xbb\xbf"


class Reason(StrEnum):
    """Why a line was rejected; the keys of :attr:`ImportSummary.rejected`."""

    EMPTY = "empty"
    ENCODING = "encoding"
    COLUMN_COUNT = "column_count"
    MISSING_USER = "missing_user"
    MISSING_ITEM = "missing_item"
    BAD_RATING = "bad_rating"
    RATING_OUT_OF_RANGE = "rating_out_of_range"
    BAD_TIMESTAMP = "bad_timestamp"


class ImportFormatError(ReelpulseError, ValueError):
    """The file as a whole cannot be read as ratings; nothing was imported."""

    def __init__(self, path: Path, line_number: int, problem: str) -> None:
        self.path, self.line_number, self.problem = path, line_number, problem
        super().__init__(f"{path}, line {line_number}: {problem}")


class LineRejected(ValueError):
    """One line cannot become a rating; it goes to the rejects file."""

    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Layout:
    """How the lines of one file are split and which column holds what."""

    delimiter: str
    columns: dict[str, int]
    width: int
    header: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RatingRow:
    """One good line, with everything its events need."""

    line_number: int
    event_id: str
    session_id: str
    device_id: str
    user_id: str
    item: str
    title_id: str
    rating: float
    event_time_ms: int


@dataclass
class ImportSummary:
    """Counts of one import, updated while its events are consumed.

    ``lines_read`` counts every line after the header (blank ones included), so
    ``lines_read == imported + rejected_total`` holds at any moment.
    """

    path: Path
    rejects_path: Path
    source_id: str = ""
    delimiter: str = ""
    header: tuple[str, ...] | None = None
    lines_read: int = 0
    imported: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    new_titles: int = 0
    bytes_read: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def line(self) -> str:
        """One summary line for the CLI."""
        reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(self.rejected.items()))
        rejected = f"{self.rejected_total} rejected" + (f" ({reasons})" if reasons else "")
        return (
            f"{self.path.name}: {self.lines_read} lines read, {self.imported} imported, "
            f"{rejected}, {self.new_titles} new titles; rejects in {self.rejects_path}"
        )


def default_rejects_path(path: Path) -> Path:
    """``ratings.csv`` -> ``ratings.csv.rejects.csv`` beside it."""
    return path.with_name(f"{path.name}.rejects.csv")


def file_identity(path: Path) -> str:
    """``sha256:<hex>`` of the file's content, read in chunks."""
    with path.open("rb") as f:
        return f"sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def batch_id(source_id: str, *, user_prefix: str = "", title_prefix: str = "") -> uuid.UUID:
    """Namespace of every id of one import: the same file and options, the same batch."""
    return uuid.uuid5(IMPORT_NAMESPACE, json.dumps([source_id, user_prefix, title_prefix]))


def import_ratings(
    path: Path,
    contract: Contract,
    *,
    known_titles: Container[str],
    rejects_path: Path | None = None,
    title_prefix: str = "",
    user_prefix: str = "",
    source_id: str | None = None,
    published_ms: int | None = None,
) -> tuple[ImportSummary, Iterator[Event]]:
    """The summary and the events of importing ``path``; the summary fills as events are consumed.

    Nothing is read until the first event is asked for.
    """
    summary = ImportSummary(path, rejects_path or default_rejects_path(path))
    rows = parse_ratings(
        path,
        rejects_path=summary.rejects_path,
        title_prefix=title_prefix,
        user_prefix=user_prefix,
        source_id=source_id,
        summary=summary,
    )
    events = to_events(rows, contract, known_titles=known_titles, published_ms=published_ms, summary=summary)
    return summary, events


def parse_ratings(
    path: Path,
    *,
    rejects_path: Path,
    title_prefix: str = "",
    user_prefix: str = "",
    source_id: str | None = None,
    summary: ImportSummary | None = None,
) -> Iterator[RatingRow]:
    """Stream the good lines of ``path`` as rows; write the bad ones to ``rejects_path``."""
    if rejects_path.resolve() == path.resolve():
        raise ImportFormatError(path, 0, "the rejects file would overwrite the input")
    summary = summary or ImportSummary(path, rejects_path)
    summary.source_id = source_id or file_identity(path)
    batch = batch_id(summary.source_id, user_prefix=user_prefix, title_prefix=title_prefix)
    ids = _Ids(batch)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("rb") as lines, rejects_path.open("w", encoding="utf-8", newline="") as out:
        rejects = _Rejects(out, summary)
        layout: Layout | None = None
        for number, raw in enumerate(lines, start=1):
            summary.bytes_read += len(raw)
            raw = raw.rstrip(b"\r\n").removeprefix(_BOM if number == 1 else b"")
            text = raw.decode("utf-8", errors="replace")
            if layout is None and text.strip():
                layout = detect_layout(text, path, number)
                summary.delimiter, summary.header = layout.delimiter, layout.header
                if layout.header:
                    continue
            summary.lines_read += 1
            try:
                user, item, rating, event_ms = parse_line(raw, layout)
            except LineRejected as rejected:
                rejects.write(number, rejected, text)
                continue
            summary.imported += 1
            yield ids.row(number, user_prefix + user, item, title_prefix + item, rating, event_ms)


def parse_line(raw: bytes, layout: Layout | None) -> tuple[str, str, float, int]:
    """``(user, item, rating, event time ms)`` of one line, or :class:`LineRejected`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LineRejected(Reason.ENCODING, f"not UTF-8 at byte {error.start}") from None
    if layout is None or not text.strip():
        raise LineRejected(Reason.EMPTY, "blank line")
    fields = split_fields(text, layout.delimiter)
    if len(fields) != layout.width:
        raise LineRejected(Reason.COLUMN_COUNT, f"{len(fields)} columns, expected {layout.width}")
    user, item, rating, timestamp = (fields[layout.columns[role]] for role in ROLES)
    if not user:
        raise LineRejected(Reason.MISSING_USER, "empty user")
    if not item:
        raise LineRejected(Reason.MISSING_ITEM, "empty item")
    return user, item, parse_rating(rating), parse_timestamp(timestamp)


def to_events(
    rows: Iterable[RatingRow],
    contract: Contract,
    *,
    known_titles: Container[str],
    published_ms: int | None = None,
    summary: ImportSummary | None = None,
) -> Iterator[Event]:
    """``("title", record)`` for each title not in ``known_titles`` (once, before its first
    rating), and ``("rating", record)`` for every row; each record checked against the contract.

    ``published_ms`` is the ``event_time`` of new title records (default: now).
    """
    rating_type, title_type = contract["rating"], contract["title"]
    published = _now_ms() if published_ms is None else published_ms
    new_titles: set[str] = set()
    for row in rows:
        if row.title_id not in new_titles and row.title_id not in known_titles:
            new_titles.add(row.title_id)
            title = title_record(row, published)
            title_type.check(title)
            if summary:
                summary.new_titles += 1
            yield "title", title
        rating = rating_record(row)
        rating_type.check(rating)
        yield "rating", rating


def rating_record(row: RatingRow) -> dict[str, Any]:
    """The ``rating`` event of one row."""
    return {
        "envelope": {
            "event_id": row.event_id,
            "event_time": row.event_time_ms,
            "user_id": row.user_id,
            "profile_id": row.user_id,
            "session_id": row.session_id,
            "device": {
                "device_id": row.device_id,
                "device_type": "WEB",
                "os": "import",
                "app_version": "import",
            },
            "country": COUNTRY_UNKNOWN,
            "client_ip": CLIENT_IP_UNKNOWN,
        },
        "title_id": row.title_id,
        "rating": row.rating,
        "source": "IMPORT",
    }


def title_record(row: RatingRow, published_ms: int) -> dict[str, Any]:
    """A placeholder catalog record for a title first seen in an import."""
    return {
        "title_id": row.title_id,
        "event_time": published_ms,
        "name": f"Imported title {row.item}",
        "kind": "MOVIE",
        "genres": [],
        "duration_s": None,
        "release_year": None,
    }


def detect_layout(text: str, path: Path, line_number: int) -> Layout:
    """Delimiter and columns from the first non-blank line of a file."""
    delimiter = next((d for d in DELIMITERS if d in text), None)
    if delimiter is None:
        raise ImportFormatError(path, line_number, "no '::', tab or comma delimiter found on the first line")
    fields = split_fields(text, delimiter)
    if not any(_normalise(f) in names for f in fields for names in COLUMN_NAMES.values()):
        return Layout(delimiter, {role: i for i, role in enumerate(ROLES)}, len(ROLES))
    return Layout(delimiter, _header_columns(fields, path, line_number), len(fields), tuple(fields))


def split_fields(text: str, delimiter: str) -> list[str]:
    """Fields of one line, stripped; CSV quoting honoured for comma and tab."""
    if delimiter != "::" and '"' in text:
        fields = next(csv.reader([text], delimiter=delimiter))
    else:
        fields = text.split(delimiter)
    return [f.strip() for f in fields]


def parse_rating(text: str) -> float:
    """Stars from 0.5 to 5.0 in steps of 0.5, or :class:`LineRejected`."""
    if not _NUMBER.fullmatch(text):
        raise LineRejected(Reason.BAD_RATING, f"rating {text!r} is not a number")
    value = float(text)
    if not MIN_RATING <= value <= MAX_RATING or not (value * 2).is_integer():
        raise LineRejected(Reason.RATING_OUT_OF_RANGE, f"rating {text} is not 0.5 to 5.0 in steps of 0.5")
    return value


def parse_timestamp(text: str) -> int:
    """UTC milliseconds from epoch seconds, epoch milliseconds or ISO-8601."""
    if _NUMBER.fullmatch(text):
        value = Decimal(text)
        ms = int(value if value >= EPOCH_MS_FROM else value * 1000)
        if ms >= MAX_EVENT_MS:
            raise LineRejected(Reason.BAD_TIMESTAMP, f"timestamp {text} is after year 9999")
        return ms
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise LineRejected(
            Reason.BAD_TIMESTAMP, f"timestamp {text!r} is neither epoch nor ISO-8601"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


class _Ids:
    """Deterministic ids of one batch; the session of the last user is cached (files are
    usually sorted by user)."""

    def __init__(self, batch: uuid.UUID) -> None:
        self.batch, self.device_id = batch, f"import:{batch}"
        self._user, self._session = "", ""

    def session(self, user_id: str) -> str:
        if user_id != self._user:
            self._user, self._session = user_id, str(uuid.uuid5(self.batch, f"session:{user_id}"))
        return self._session

    def row(self, number: int, user_id: str, item: str, title_id: str, rating: float, ms: int) -> RatingRow:
        event_id = str(uuid.uuid5(self.batch, f"line:{number}"))
        return RatingRow(
            line_number=number,
            event_id=event_id,
            session_id=self.session(user_id),
            device_id=self.device_id,
            user_id=user_id,
            item=item,
            title_id=title_id,
            rating=rating,
            event_time_ms=ms,
        )


class _Rejects:
    """Writes rejected lines to the rejects CSV and counts them by reason."""

    def __init__(self, out: IO[str], summary: ImportSummary) -> None:
        self.summary, self._writer = summary, csv.writer(out)
        self._writer.writerow(REJECTS_COLUMNS)

    def write(self, number: int, rejected: LineRejected, text: str) -> None:
        self._writer.writerow((number, str(rejected), text))
        self.summary.rejected[rejected.reason.value] += 1


def _header_columns(fields: list[str], path: Path, line_number: int) -> dict[str, int]:
    columns: dict[str, int] = {}
    for index, name in enumerate(fields):
        role = next((r for r, names in COLUMN_NAMES.items() if _normalise(name) in names), None)
        if role in columns:
            raise ImportFormatError(path, line_number, f"header names the {role} column twice")
        if role:
            columns[role] = index
    missing = [role for role in ROLES if role not in columns]
    if missing:
        expected = "; ".join(f"{r}: {', '.join(sorted(COLUMN_NAMES[r]))}" for r in missing)
        raise ImportFormatError(
            path, line_number, f"header {fields} lacks {', '.join(missing)} (names: {expected})"
        )
    return columns


def _normalise(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
