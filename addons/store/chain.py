"""Tamper evidence: each finished call carries a hash chained to the previous one.

Every writer replica keeps its own chain (``chain_id``), numbered from 1 by
``chain_seq``. A record's hash covers a canonical JSON of all its stored
fields, bodies by their sha256, plus the previous record's hash, so editing,
deleting or reordering a record breaks the chain at that record. Pruning
deletes a prefix of each chain and leaves a checkpoint (the last pruned
hash) for ``verify`` to start from.

What it does not prove: a truncated chain tail, or an attacker who rewrites
every later hash as well; anchor the latest hashes elsewhere for that.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, union, update

from addons.store.models import calls, chain_checkpoints, sessions

GENESIS = "0" * 64
UNHASHED = frozenset({"id", "record_hash"})
HASHED_COLUMNS = tuple(column.name for column in calls.columns if column.name not in UNHASHED)


def canonical(row: Mapping[str, Any]) -> bytes:
    """The bytes a record's hash covers; null fields are left out so new columns are benign."""
    fields = {}
    for name in HASHED_COLUMNS:
        value = row.get(name)
        if value is None:
            continue
        kind = type(value)
        if kind is bytes or kind is memoryview or kind is bytearray:
            value = "sha256:" + hashlib.sha256(value).hexdigest()
        elif kind is datetime:
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        fields[name] = value
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(row: Mapping[str, Any]) -> str:
    """The hash of a record whose ``chain_id``, ``chain_seq`` and ``prev_hash`` are set."""
    return hashlib.sha256(canonical(row)).hexdigest()


# canonical()'s own encoder, built once; and its object keys, in the order it sorts them.
_CANONICAL_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True)
_SORTED_KEYS = tuple((name, encode_basestring(name) + ":") for name in sorted(HASHED_COLUMNS))


def canonical_json(value: Any) -> str:
    """A field's part of ``canonical``: how it is serialised inside the record's JSON."""
    return _CANONICAL_JSON.encode(value)


def prepared_hash(row: Mapping[str, Any], encoded: Mapping[str, str]) -> str:
    """``record_hash(row)`` for a row whose JSON fields are serialised already.

    ``encoded[name]`` is ``canonical_json`` of field ``name``'s value, and stands in
    for ``row[name]`` (the writer keeps JSON columns as the text it stores).
    The bytes hashed are exactly ``canonical``'s, built field by field, so that
    each JSON value is serialised once for storing and hashing alike.
    """
    parts = []
    for name, key in _SORTED_KEYS:
        value = row.get(name)
        if value is None:
            continue
        piece = encoded.get(name)
        if piece is None:
            kind = type(value)
            if kind is str:
                piece = encode_basestring(value)
            elif kind is int:
                piece = int.__repr__(value)
            elif kind is bytes or kind is memoryview or kind is bytearray:
                piece = '"sha256:' + hashlib.sha256(value).hexdigest() + '"'
            elif kind is datetime:
                piece = '"' + value.astimezone(UTC).isoformat(timespec="microseconds") + '"'
            else:
                piece = _CANONICAL_JSON.encode(value)
        parts.append(key + piece)
    return hashlib.sha256(("{" + ",".join(parts) + "}").encode()).hexdigest()


def load_head(connection: Connection, chain_id: str) -> tuple[int, str]:
    """The last (sequence, hash) of a chain: newest record, else checkpoint, else genesis."""
    newest = connection.execute(
        select(calls.c.chain_seq, calls.c.record_hash)
        .where(calls.c.chain_id == chain_id, calls.c.chain_seq.is_not(None))
        .order_by(calls.c.chain_seq.desc())
        .limit(1)
    ).first()
    if newest is not None:
        return newest.chain_seq, newest.record_hash
    return _checkpoint(connection, chain_id)


def _checkpoint(connection: Connection, chain_id: str) -> tuple[int, str]:
    checkpoint = connection.execute(
        select(chain_checkpoints.c.seq, chain_checkpoints.c.hash).where(
            chain_checkpoints.c.chain_id == chain_id
        )
    ).first()
    return (checkpoint.seq, checkpoint.hash) if checkpoint is not None else (0, GENESIS)


@dataclass(frozen=True)
class BrokenLink:
    """The first record at which a chain stops verifying."""

    chain_id: str
    record_id: int
    request_id: str
    seq: int
    problem: str

    def __str__(self) -> str:
        return (
            f"chain {self.chain_id}: record {self.record_id} (request {self.request_id}, "
            f"sequence {self.seq}): {self.problem}"
        )


@dataclass
class VerifyReport:
    chains: int = 0
    records: int = 0
    unfinished: int = 0
    broken: list[BrokenLink] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.broken


def verify(engine: Engine, page_size: int = 1000) -> VerifyReport:
    """Walk every chain from its checkpoint; report the first broken link of each."""
    report = VerifyReport()
    with engine.connect() as connection:
        for chain_id in _chain_ids(connection):
            report.chains += 1
            seq, previous = _checkpoint(connection, chain_id)
            for row in _chain_rows(connection, chain_id, after=seq, page_size=page_size):
                problem = _link_problem(row, seq, previous)
                if problem:
                    report.broken.append(
                        BrokenLink(
                            chain_id, row["id"], row["request_id"], row["chain_seq"], problem
                        )
                    )
                    break
                report.records += 1
                seq, previous = row["chain_seq"], row["record_hash"]
        report.unfinished = connection.execute(
            select(func.count()).select_from(calls).where(calls.c.chain_seq.is_(None))
        ).scalar_one()
    return report


def _link_problem(row: Mapping[str, Any], seq: int, previous: str) -> str | None:
    if row["chain_seq"] != seq + 1:
        return f"expected sequence {seq + 1}: records {seq + 1}..{row['chain_seq'] - 1} are missing"
    if row["prev_hash"] != previous:
        return "its prev_hash does not match the previous record's hash"
    if row["record_hash"] != record_hash(row):
        return "its contents do not match its hash (the record was changed)"
    return None


def _chain_ids(connection: Connection) -> list[str]:
    chained = select(calls.c.chain_id).where(calls.c.chain_seq.is_not(None))
    checkpoints = select(chain_checkpoints.c.chain_id)
    return sorted(connection.execute(union(chained, checkpoints)).scalars())


def _chain_rows(
    connection: Connection, chain_id: str, after: int, page_size: int
) -> Iterator[Mapping[str, Any]]:
    result = connection.execution_options(yield_per=page_size).execute(
        select(calls)
        .where(calls.c.chain_id == chain_id, calls.c.chain_seq > after)
        .order_by(calls.c.chain_seq)
    )
    for row in result:
        yield row._mapping


@dataclass
class PruneReport:
    records: int = 0
    unfinished: int = 0
    sessions: int = 0
    chains: int = 0


def prune(engine: Engine, before: datetime) -> PruneReport:
    """Delete calls older than ``before``, per chain only a prefix, checkpointing each chain."""
    report = PruneReport()
    now = datetime.now(UTC)
    with engine.begin() as connection:
        for chain_id in _chain_ids(connection):
            deleted = _prune_chain(connection, chain_id, before, now)
            if deleted:
                report.records += deleted
                report.chains += 1
        report.unfinished = connection.execute(
            delete(calls).where(calls.c.chain_seq.is_(None), calls.c.time < before)
        ).rowcount
        still_used = select(calls.c.id).where(calls.c.session_id == sessions.c.id).exists()
        report.sessions = connection.execute(
            delete(sessions).where(sessions.c.last_seen < before, ~still_used)
        ).rowcount
    return report


def _prune_chain(connection: Connection, chain_id: str, before: datetime, now: datetime) -> int:
    in_chain = (calls.c.chain_id == chain_id, calls.c.chain_seq.is_not(None))
    # A call held for approval can finish (and be chained) long after younger calls,
    # so stop at the first record that must be kept: only a prefix may go.
    first_kept = connection.execute(
        select(func.min(calls.c.chain_seq)).where(*in_chain, calls.c.time >= before)
    ).scalar()
    if first_kept is None:
        last = connection.execute(select(func.max(calls.c.chain_seq)).where(*in_chain)).scalar()
    else:
        last = first_kept - 1
    checkpoint_seq, _ = _checkpoint(connection, chain_id)
    if last is None or last <= checkpoint_seq:
        return 0
    last_hash = connection.execute(
        select(calls.c.record_hash).where(calls.c.chain_id == chain_id, calls.c.chain_seq == last)
    ).scalar_one()
    deleted = connection.execute(delete(calls).where(*in_chain, calls.c.chain_seq <= last)).rowcount
    values = {"seq": last, "hash": last_hash, "updated": now}
    updated = connection.execute(
        update(chain_checkpoints)
        .where(chain_checkpoints.c.chain_id == chain_id)
        .values(pruned=chain_checkpoints.c.pruned + deleted, **values)
    ).rowcount
    if not updated:
        connection.execute(
            insert(chain_checkpoints).values(chain_id=chain_id, pruned=deleted, **values)
        )
    return deleted
