"""Named SQL, listmonk style: `queries/<area>.sql` holds blocks that start with `-- name: <query-name>`.

    from campaigns import queries
    conn.execute(queries.load("contacts")["upsert-contacts"], params)

This is the one way SQL is loaded, everywhere: the Airflow plugin passes its own queries folder as `folder`, and a
function that runs several queries of one area may keep `queries.load(area)` in a local name. A query with
`{placeholders}` is completed by psycopg.sql composition (identifiers, fragments named in the same file); its
parameters stay bound. Each file is read once per process. The comment lines right under a `-- name:` line say why
the query is shaped so; they are for readers and are not sent to the server (a `%` in prose would otherwise look
like a placeholder to psycopg). Comments inside the SQL body are kept.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

QUERIES_DIR = Path(__file__).with_name("queries")

_NAME_LINE = re.compile(r"^--\s*name:\s*(?P<name>[A-Za-z0-9_.-]+)\s*$", re.MULTILINE)
_AREA = re.compile(r"[a-z0-9_]+")


class Queries(dict[str, str]):
    """The queries of one area by name; an unknown name says which names exist."""

    area: str = ""

    def __missing__(self, name: str) -> str:
        raise KeyError(f"no query {name!r} in queries/{self.area}.sql; it has: {', '.join(sorted(self))}")


@cache
def load(area: str, folder: Path = QUERIES_DIR) -> dict[str, str]:
    """The named queries of `<folder>/<area>.sql`, parsed once per process (treat the result as read-only)."""
    if not _AREA.fullmatch(area):
        # The area becomes a file name: refuse anything that could leave the queries folder.
        raise ValueError(f"query area must match [a-z0-9_]+, got {area!r}")
    path = Path(folder) / f"{area}.sql"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        known = ", ".join(sorted(p.stem for p in Path(folder).glob("*.sql")))
        raise FileNotFoundError(f"no query file {path}; known areas: {known or 'none'}") from exc
    return parse(text, area=area)


def parse(text: str, area: str = "") -> Queries:
    """Split SQL text on `-- name:` lines into {name: sql}, dropping each block's leading comment lines."""
    queries = Queries()
    queries.area = area
    # re.split with one group yields [preamble, name1, body1, name2, body2, ...]; the preamble is free text.
    parts = _NAME_LINE.split(text)
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice in queries/{area}.sql")
        lines = body.strip().splitlines()
        while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
            lines.pop(0)
        sql = "\n".join(lines).strip()
        if not sql:
            raise ValueError(f"query {name!r} in queries/{area}.sql has no SQL")
        queries[name] = sql
    return queries
