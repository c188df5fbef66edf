"""Erasure of one account from the lake (``reelpulse forget USER_ID``), with a receipt.

Which rows are the account's is decided by each table's columns, so a new table with the
same columns is covered without a change here (first match wins):

- ``envelope.user_id`` (bronze events): the raw user id;
- ``original_key`` and ``original_value`` (bronze ``_quarantine``: records that could not
  be decoded, so only their bytes can be searched; best effort): a key equal to the user id
  or to one of the account's session ids, or a value holding the user id, or one of those
  session ids, as an Avro string (length prefix + UTF-8) or the user id as a JSON string
  (an id shorter than 8 bytes by the key only: inside a value it could be any bytes);
- ``user_id`` (silver events, ``playback_sessions``, ``dim_users``, ``dim_devices``, gold
  per-user tables): the pseudonym, the hex HMAC-SHA256 of the user id under the
  pseudonymization key, as silver computes it (the raw id in a bronze-layer table);
- ``payload`` (silver ``_late``, rows kept as JSON): ``user_id`` the pseudonym, or
  ``session_id`` one of the account's sessions;
- ``session_id`` alone (``cdn_request``: edge log lines carry a client IP and the playback
  session, no user id): the account's sessions, as bronze and silver know them before
  the delete. Lines without a session cannot be attributed to anyone and stay.

Batches held by the quality gates (``_audit/<layer>/...``) follow their layer's rules.
Each delete is a MERGE whose source is a DataFrame of the identifiers, so no identifier is
written into the commit's predicate in the transaction log. Gold is then rebuilt from the
cleaned silver. Last, deletion vectors are purged (``REORG TABLE ... APPLY (PURGE)``) and
every covered table and all of gold are vacuumed with no retention: older versions may hold
the account even where the current one does not (a device row that moved to another
account, a gold table rebuilt, a run that died before its vacuum), and afterwards time
travel to any of them fails because their files are gone.

Idempotent: a second run deletes nothing, vacuums again and writes another receipt (a run
that dies writes none; run it again). A VACUUM with no retention deletes files that a
running write has not committed yet: run it while no job writes the lake.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from functools import reduce
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch import lake, maintenance, pseudonymize
from reelpulse.codec import zigzag
from reelpulse.errors import ReelpulseError
from reelpulse.settings import Settings

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger("reelpulse.batch.erasure")

RebuildGold = Callable[[Settings, "SparkSession"], Mapping[str, int] | None]
REBUILT = "rebuilt from silver"
NEEDLES = "exact binary, fragment binary"
MIN_FRAGMENT_BYTES = 8  # shorter ids are looked for in quarantined keys only
QUARANTINE_MATCH = "t.original_key = s.exact OR contains(t.original_value, s.fragment)"
PAYLOAD_MATCH = (
    "get_json_object(t.payload, '$.user_id') = s.id OR get_json_object(t.payload, '$.session_id') = s.id"
)
NOT_COVERED = (
    "Kafka: the account's events stay in their topics until the topics' retention deletes them; "
    "bronze would ingest them again only if its checkpoints (_checkpoints/bronze) were reset.",
    "Delta transaction logs: the per-file column statistics (min/max) of commits made before this "
    "erasure may hold the user id (raw in bronze, the pseudonym in silver and gold) in _delta_log "
    "until those log entries expire (delta.logRetentionDuration, 30 days by default); they hold "
    "no rows, and no version can be read any more.",
    "bronze/_quarantine: undecodable records are matched by their bytes only; a record whose bytes "
    "no longer hold the user id or a session id intact is not found, and an id shorter than "
    f"{MIN_FRAGMENT_BYTES} bytes is matched by the Kafka key only (inside a value it could be any bytes).",
    "cdn_request: edge log lines without a session id cannot be attributed to the account and stay.",
    "_quality: validation results and Data Docs may quote sample values that failed an expectation; "
    "they are not rewritten.",
    "Anything copied out of the lake: exports, saved query results, backups of its storage.",
)


class ErasureError(ReelpulseError, ValueError):
    """An erasure request that cannot be carried out; nothing was deleted."""


@dataclass(frozen=True)
class Subject:
    """The account to forget: its raw id (never logged or written), its pseudonym and the
    session ids of its events."""

    user_id: str = field(repr=False)
    pseudonym: str
    sessions: tuple[str, ...] = ()

    def id_in(self, layer: str) -> str:
        """The user id as tables of ``layer`` hold it."""
        return self.user_id if layer == "bronze" else self.pseudonym


def pseudonym(user_id: str, key: bytes) -> str:
    """The user id as silver holds it: hex HMAC-SHA256 under ``key`` (RFC 2104, equal to
    :func:`batch.pseudonymize.hmac_sha256_hex`)."""
    pseudonymize.pads(key)  # the key checks silver makes
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Rule:
    """How a table's rows of the subject are found: a MERGE condition (target ``t``, source
    ``s``) over source rows of identifiers; ``matched_by`` says it without the values."""

    matched_by: str
    condition: str
    schema: str
    rows: tuple[tuple[Any, ...], ...]


def rule_for(table: lake.LakeTable, schema: StructType, subject: Subject) -> Rule | None:
    """The rule of a table from its columns (see the module doc), or None when it holds no
    identifier of an account."""
    from pyspark.sql.types import StructType

    columns = {f.name: f.dataType for f in schema.fields}
    ids = ((subject.id_in(table.layer),),)
    sessions = tuple((s,) for s in subject.sessions)
    envelope = columns.get("envelope")
    if isinstance(envelope, StructType) and "user_id" in envelope.fieldNames():
        return Rule("envelope.user_id", "t.envelope.user_id = s.id", "id string", ids)
    if {"original_key", "original_value"} <= columns.keys():
        return Rule("original_key/original_value bytes", QUARANTINE_MATCH, NEEDLES, needles(subject))
    if "user_id" in columns:
        return Rule("user_id", "t.user_id = s.id", "id string", ids)
    if "payload" in columns:
        return Rule("payload user_id/session_id", PAYLOAD_MATCH, "id string", (*ids, *sessions))
    if "session_id" in columns:
        return Rule("session_id (the account's sessions)", "t.session_id = s.id", "id string", sessions)
    return None


def needles(subject: Subject) -> tuple[tuple[bytes, bytes | None], ...]:
    """Quarantine source rows: a Kafka key to equal, and a fragment the value must contain
    (None for an id too short to be told apart from other bytes)."""
    user = subject.user_id.encode()
    rows = [
        (user, _long(avro_string(user), user)),
        (user, _long(json.dumps(subject.user_id, ensure_ascii=False).encode(), user)),
    ]
    rows += [(s.encode(), _long(avro_string(s.encode()), s.encode())) for s in subject.sessions]
    return tuple(rows)


def _long(fragment: bytes, value: bytes) -> bytes | None:
    return fragment if len(value) >= MIN_FRAGMENT_BYTES else None


def avro_string(value: bytes) -> bytes:
    """``value`` as Avro encodes a string: zig-zag varint length, then the bytes."""
    return zigzag(len(value)) + value


def sessions_of(frames: Mapping[lake.LakeTable, DataFrame], subject: Subject) -> tuple[str, ...]:
    """Session ids of the subject's rows in every table holding both a user and a session id."""
    from pyspark.sql import functions as F

    found = []
    for table, frame in frames.items():
        who = F.lit(subject.id_in(table.layer))
        if {"user_id", "session_id"} <= set(frame.columns):
            found.append(frame.where(F.col("user_id") == who).select(F.col("session_id").alias("s")))
        elif "envelope" in frame.columns and {"user_id", "session_id"} <= _fields(frame, "envelope"):
            found.append(
                frame.where(F.col("envelope.user_id") == who).select(F.col("envelope.session_id").alias("s"))
            )
    if not found:
        return ()
    rows = (
        reduce(lambda a, b: a.unionByName(b), found).where("s IS NOT NULL AND s != ''").distinct().collect()
    )
    return tuple(sorted(row.s for row in rows))


def _fields(frame: DataFrame, column: str) -> set[str]:
    from pyspark.sql.types import StructType

    data_type = frame.schema[column].dataType
    return set(data_type.fieldNames()) if isinstance(data_type, StructType) else set()


# --- the steps -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableErasure:
    """What the erasure did to one table."""

    table: str
    path: str
    matched_by: str
    rows_deleted: int
    version_after_delete: int
    version_after_vacuum: int | None = None
    deletion_vectors_purged: bool = False


def delete(spark: SparkSession, table: lake.LakeTable, rule: Rule) -> TableErasure:
    """MERGE ... WHEN MATCHED THEN DELETE with the rule's identifiers as the source."""
    from delta.tables import DeltaTable

    deleted = 0
    if rule.rows:
        source = spark.createDataFrame(list(rule.rows), rule.schema)
        target = DeltaTable.forPath(spark, table.path).alias("t")
        metrics = target.merge(source.alias("s"), rule.condition).whenMatchedDelete().execute().first()
        deleted = int(metrics["num_deleted_rows"]) if metrics else 0
    after = maintenance.version(spark, table.path)
    return TableErasure(table.qualified, table.path, rule.matched_by, deleted, after)


def purge_and_vacuum(spark: SparkSession, erased: TableErasure) -> TableErasure:
    """Rewrite the files deletion vectors point into (when the table uses them), then VACUUM
    with no retention; the caller turns Delta's retention check off."""
    features = maintenance.detail(spark, erased.path).get("tableFeatures") or []
    purged = "deletionVectors" in features
    if purged:
        location = str(lake.local_path(erased.path).resolve()).replace("`", "``")
        spark.sql(f"REORG TABLE delta.`{location}` APPLY (PURGE)").collect()
    _, version = maintenance.vacuum_table(spark, erased.path, 0)
    return replace(erased, version_after_vacuum=version, deletion_vectors_purged=purged)


def rebuilt_gold(spark: SparkSession, settings: Settings, erased: set[str]) -> list[TableErasure]:
    """Gold tables the rebuild rewrote that no rule deleted from (aggregates)."""
    gold = [t for t in lake.tables(settings.lake_dir) if t.layer == "gold" and t.qualified not in erased]
    return [TableErasure(t.qualified, t.path, REBUILT, 0, maintenance.version(spark, t.path)) for t in gold]


@dataclass(frozen=True)
class Receipt:
    """The record of one erasure: JSON at ``path``, naming the subject by pseudonym only."""

    path: Path
    subject: str
    requested_at: dt.datetime
    completed_at: dt.datetime
    tables: tuple[TableErasure, ...]
    gold_rebuilt: Mapping[str, int]

    @property
    def rows_deleted(self) -> int:
        return sum(t.rows_deleted for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": {"pseudonym": self.subject, "method": "hex HMAC-SHA256 of the user id, as in silver"},
            "requested_at": self.requested_at.isoformat(),
            "completed_at": self.completed_at.isoformat(),
            "rows_deleted": self.rows_deleted,
            "tables": [asdict(t) for t in self.tables],
            "gold_rebuilt": dict(self.gold_rebuilt),
            "not_covered": list(NOT_COVERED),
        }

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("x") as out:  # a receipt is never overwritten
            json.dump(self.to_json(), out, indent=2)


def receipt_path(settings: Settings, requested_at: dt.datetime, subject: Subject) -> Path:
    directory = lake.local_path(lake.Lake(settings.lake_dir).erasure)
    return directory / f"{requested_at:%Y%m%dT%H%M%S.%fZ}-{subject.pseudonym[:12]}.json"


def _gold_run() -> RebuildGold:
    from batch import pipeline

    return pipeline.gold_gated


def forget(
    settings: Settings,
    spark: SparkSession,
    user_id: str,
    *,
    pseudonymization_key: bytes,
    rebuild_gold: RebuildGold | None = None,
) -> Receipt:
    """Delete every row of ``user_id`` from the lake, rebuild gold (``rebuild_gold``,
    default :func:`batch.gold.run`), purge and vacuum, and write the receipt."""
    requested_at = dt.datetime.now(dt.UTC)
    if not user_id.strip():
        raise ErasureError("the user id is empty: give the account id as clients send it")
    rebuild = rebuild_gold or _gold_run()
    subject = Subject(user_id, pseudonym(user_id, pseudonymization_key))
    path = receipt_path(settings, requested_at, subject)
    frames = {t: spark.read.format("delta").load(t.path) for t in lake.tables(settings.lake_dir, audit=True)}
    subject = replace(subject, sessions=sessions_of(frames, subject))
    plan = [(t, rule) for t, frame in frames.items() if (rule := rule_for(t, frame.schema, subject))]
    erased = [delete(spark, t, rule) for t, rule in plan]
    rebuilt = dict(rebuild(settings, spark) or {})
    erased += rebuilt_gold(spark, settings, {e.table for e in erased})
    with maintenance.retention_check_disabled(spark):
        erased = [purge_and_vacuum(spark, e) for e in erased]
    completed_at = dt.datetime.now(dt.UTC)
    receipt = Receipt(path, subject.pseudonym, requested_at, completed_at, tuple(erased), rebuilt)
    receipt.write()
    log.info("forgot %s: %d rows from %d tables", subject.pseudonym[:12], receipt.rows_deleted, len(erased))
    return receipt
