"""Contact import: a CSV stream -> validated rows -> COPY into a staging table -> one set-based upsert.

Rules (docs: the `import_contacts` DAG):
- Columns `email`, `first_name`, `last_name`; header names are case- and space-insensitive ("First Name" is
  `first_name`). Every other column goes into `attributes` under its normalised name, as a string; empty cells
  are omitted. A column with an empty header is ignored.
- Addresses are checked with email-validator (syntax only, no DNS) and stored in its normalised form; a contact
  is identified by lower(email). Addresses with non-ASCII local parts are invalid: SES cannot send to them.
- Invalid rows and duplicates (the same address again in the file; the first occurrence wins) are reported with
  their line numbers and never fail the import. Line numbers are physical lines of the file, the header being
  line 1; a quoted cell with line breaks makes a record span several lines and it is reported by its first one.
- Upsert by email: empty cells never erase stored values, attributes are merged, and a row the file does not
  change is not written at all, so importing the same file twice changes nothing.
- An import never re-subscribes an unsubscribed list member and never clears a suppression; it reports such rows.
- The whole import is one transaction: a database error leaves nothing half-imported.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import psycopg

from campaigns import queries
from campaigns.audience.addresses import EmailNotValidError, stored_address

# Problem rows kept per kind in the task's XCom result; the log always has all of them.
XCOM_PROBLEM_CAP = 100
# Longest cell value echoed back in a problem report (a broken file can put a whole paragraph in `email`).
MAX_REPORTED_VALUE = 320

CONTACT_COLUMNS = ("email", "first_name", "last_name")
S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})

_SEPARATORS = re.compile(r"[\s\-]+")


@dataclass(frozen=True)
class Problem:
    """One reported row: its line in the file, the address as written, and why it is reported."""

    line: int
    email: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "email": self.email, "reason": self.reason}


@dataclass
class ImportReport:
    """What an import did, row by row where a row needs a person's attention."""

    list_name: str
    list_created: bool = False
    rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    added_to_list: int = 0
    already_member: int = 0
    invalid_rows: list[Problem] = field(default_factory=list)
    duplicate_rows: list[Problem] = field(default_factory=list)
    unsubscribed_rows: list[Problem] = field(default_factory=list)
    suppressed_rows: list[Problem] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return len(self.invalid_rows)

    @property
    def duplicates(self) -> int:
        return len(self.duplicate_rows)

    @property
    def unsubscribed_kept(self) -> int:
        return len(self.unsubscribed_rows)

    @property
    def suppressed(self) -> int:
        return len(self.suppressed_rows)

    def problems(self) -> list[tuple[str, Problem]]:
        """Every reported row as (kind, problem), in file order."""
        kinds = (("invalid", self.invalid_rows), ("duplicate", self.duplicate_rows),
                 ("unsubscribed", self.unsubscribed_rows), ("suppressed", self.suppressed_rows))
        return sorted(((kind, p) for kind, rows in kinds for p in rows), key=lambda kp: kp[1].line)

    def counts(self) -> dict[str, int]:
        """The counters alone."""
        return {
            "rows": self.rows,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "added_to_list": self.added_to_list,
            "already_member": self.already_member,
            "invalid": self.invalid,
            "duplicates": self.duplicates,
            "unsubscribed_kept": self.unsubscribed_kept,
            "suppressed": self.suppressed,
        }

    def as_dict(self, cap: int = XCOM_PROBLEM_CAP) -> dict[str, Any]:
        """JSON-ready summary for XCom: all counters, at most `cap` problem rows per kind."""
        lists = {
            "invalid_rows": self.invalid_rows,
            "duplicate_rows": self.duplicate_rows,
            "unsubscribed_rows": self.unsubscribed_rows,
            "suppressed_rows": self.suppressed_rows,
        }
        return {
            "list": self.list_name,
            "list_created": self.list_created,
            **self.counts(),
            **{key: [p.as_dict() for p in rows[:cap]] for key, rows in lists.items()},
            # Says that the lists above were cut; the task log has every row.
            "problems_truncated": any(len(rows) > cap for rows in lists.values()),
        }

    def log_to(self, log: logging.Logger) -> None:
        """Log the counters and every problem row (the XCom result is capped, the log is not)."""
        log.info("import into list %r: %s", self.list_name, json.dumps(self.counts()))
        for kind, p in self.problems():
            log.warning("line %d: %s %s: %s", p.line, kind, p.email or "(no address)", p.reason)


@dataclass(frozen=True)
class ContactRow:
    """One validated, first-seen row on its way to the staging table."""

    line: int
    email: str
    first_name: str | None
    last_name: str | None
    attributes: dict[str, str]


def normalise_header(name: str) -> str:
    """`" First Name "` -> `first_name`: header names match case- and space-insensitively."""
    return _SEPARATORS.sub("_", name.strip().lower()).strip("_")


def _shown(value: str) -> str:
    return value if len(value) <= MAX_REPORTED_VALUE else value[:MAX_REPORTED_VALUE] + "..."


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """Pair each CSV record with the physical line it starts on (the header is line 1)."""
    # csv.reader.line_num counts the physical lines consumed so far: right after a record it is that record's
    # last line (a quoted cell may span several), so the next record starts one line later.
    start = 1
    for record in reader:
        yield start, record
        start = reader.line_num + 1


def parse_contacts(stream: Iterable[str], report: ImportReport) -> Iterator[ContactRow]:
    """Yield valid, first-seen rows of a CSV text stream; count rows and record invalid/duplicate ones in `report`.

    Raises ValueError for a file that cannot be imported at all: no header, no `email` column, two columns with
    the same name, a byte sequence that is not UTF-8.
    """
    reader = csv.reader(stream)
    records = _records(reader)
    try:
        header = _read_header(records)
        positions = {name: i for i, name in enumerate(header) if name}
        email_at = positions["email"]
        first_at = positions.get("first_name")
        last_at = positions.get("last_name")
        extras = [(name, i) for name, i in positions.items() if name not in CONTACT_COLUMNS]
        width = len(header)
        seen: dict[str, int] = {}

        for line, cells in records:
            if not any(cell.strip() for cell in cells):
                continue  # a blank line (or a row of empty cells, as spreadsheets export) is not a row
            report.rows += 1
            raw = cells[email_at].strip() if email_at < len(cells) else ""
            if len(cells) > width and any(cell.strip() for cell in cells[width:]):
                # Values beyond the last column: usually a stray comma or a broken quote, so every cell may be in
                # the wrong column, and importing the row would store garbage under a valid address. (Extra
                # *empty* cells are only trailing commas, which spreadsheets like to write.)
                report.invalid_rows.append(
                    Problem(line, _shown(raw), f"{len(cells)} cells but the header has {width} columns")
                )
                continue
            if not raw:
                report.invalid_rows.append(Problem(line, "", "no email address"))
                continue
            if any("\x00" in cell for cell in cells):
                # PostgreSQL text cannot hold NUL; one such cell would abort the COPY for the whole file.
                report.invalid_rows.append(Problem(line, _shown(raw.replace("\x00", "")), "contains a NUL character"))
                continue
            try:
                email = stored_address(raw)
            except EmailNotValidError as exc:
                report.invalid_rows.append(Problem(line, _shown(raw), str(exc)))
                continue
            key = email.lower()
            first_line = seen.get(key)
            if first_line is not None:
                report.duplicate_rows.append(Problem(line, _shown(raw), f"duplicate of line {first_line}"))
                continue
            seen[key] = line
            attributes = {}
            for name, i in extras:
                if i < len(cells) and (value := cells[i].strip()):
                    attributes[name] = value
            yield ContactRow(
                line=line,
                email=email,
                first_name=_cell(cells, first_at),
                last_name=_cell(cells, last_at),
                attributes=attributes,
            )
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"the file is not UTF-8 text (after line {reader.line_num}): save it as CSV UTF-8 and import again"
        ) from exc
    except csv.Error as exc:
        raise ValueError(f"unreadable CSV at line {reader.line_num}: {exc}") from exc


def _cell(cells: list[str], at: int | None) -> str | None:
    if at is None or at >= len(cells):
        return None
    return cells[at].strip() or None


def _read_header(records: Iterator[tuple[int, list[str]]]) -> list[str]:
    for _line, cells in records:
        if not any(cell.strip() for cell in cells):
            continue  # blank lines before the header
        # A UTF-8 BOM survives decoding with plain "utf-8" (Excel writes one); it is not part of the name.
        cells = [cells[0].lstrip("\ufeff"), *cells[1:]]
        header = [normalise_header(cell) for cell in cells]
        clashes = sorted({name for name in header if name and header.count(name) > 1})
        if clashes:
            raise ValueError(
                f"the CSV header names {', '.join(repr(c) for c in clashes)} more than once "
                f"(case and spaces do not count); columns found: {cells}"
            )
        if "email" not in header:
            raise ValueError(f"the CSV has no 'email' column; columns found: {cells}")
        return header
    raise ValueError("the CSV is empty: expected a header row with an 'email' column")


def import_csv(conn: psycopg.Connection, stream: Iterable[str], list_name: str) -> ImportReport:
    """Import a CSV text stream into contacts and the list `list_name` (created if missing), in one transaction."""
    name = list_name.strip()
    if not name:
        raise ValueError("the list name is empty")
    sql = queries.load("contacts")
    report = ImportReport(list_name=name)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql["create-staging"])
        # Parsing feeds COPY as it goes: the file is never held in memory, only the set of addresses seen.
        staged = 0
        with cur.copy(sql["copy-staging"]) as copy:
            for row in parse_contacts(stream, report):
                copy.write_row(
                    (row.line, row.email, row.first_name, row.last_name,
                     json.dumps(row.attributes, ensure_ascii=False, separators=(",", ":")))
                )
                staged += 1
        cur.execute(sql["analyze-staging"])

        cur.execute(sql["upsert-contacts"])
        inserted, updated = _values(cur.fetchone(), "inserted", "updated")
        report.inserted, report.updated = inserted, updated
        report.unchanged = staged - inserted - updated

        list_id, report.list_created = _ensure_list(cur, sql["ensure-list"], name)

        cur.execute(sql["add-list-members"], {"list_id": list_id})
        added, already, unsubscribed = _values(cur.fetchone(), "added_to_list", "already_member", "unsubscribed")
        report.added_to_list, report.already_member = added, already
        report.unsubscribed_rows = [
            Problem(r["line"], r["email"], f"unsubscribed from list {name!r}; left unsubscribed")
            for r in unsubscribed
        ]

        cur.execute(sql["suppressed-rows"])
        report.suppressed_rows = [
            Problem(line, email, f"suppressed ({reason}); the suppression stays")
            for line, email, reason in (_values(r, "line", "email", "reason") for r in cur.fetchall())
        ]
        cur.execute(sql["drop-staging"])
    return report


def _values(row: Any, *names: str) -> tuple[Any, ...]:
    """Read columns from a dict row (campaigns.db.connect) or a tuple row (a plain psycopg connection)."""
    if isinstance(row, dict):
        return tuple(row[n] for n in names)
    return tuple(row)


def _ensure_list(cur: psycopg.Cursor, sql: str, name: str) -> tuple[int, bool]:
    for _attempt in range(3):
        cur.execute(sql, {"name": name})
        row = cur.fetchone()
        if row is not None:
            list_id, created = _values(row, "id", "created")
            return list_id, created
    raise RuntimeError(f"could not create or find the list {name!r}")


@contextmanager
def open_csv(path: str, aws_conn_id: str = "aws_default") -> Iterator[TextIO]:
    """Open a local path or an object-storage URI (s3://bucket/key through `aws_conn_id`) as UTF-8 text."""
    parts = urlsplit(path)
    # utf-8-sig drops Excel's BOM; newline="" lets the csv module see line breaks inside quoted cells as written.
    text = {"encoding": "utf-8-sig", "newline": ""}
    # A one-letter "scheme" is a Windows drive (C:\...), not a URI.
    if len(parts.scheme) <= 1:
        with open(Path(path).expanduser(), **text) as fh:
            yield fh
        return

    from airflow.sdk import ObjectStoragePath

    conn_id = None
    # `s3://my_conn@bucket/key` names its own connection; explicit conn_id would override it.
    if parts.scheme in S3_SCHEMES and "@" not in parts.netloc:
        conn_id = aws_conn_id
    with ObjectStoragePath(path, conn_id=conn_id).open("r", **text) as fh:
        yield fh
