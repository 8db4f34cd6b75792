"""Contact import against the real test database: upsert, reporting, idempotence, the never-resubscribe rules."""

from __future__ import annotations

import io

import pytest

from campaigns import queries
from campaigns.audience.contacts import ImportReport, Problem, import_csv, normalise_header, open_csv


def csv_stream(text: str) -> io.StringIO:
    return io.StringIO(text, newline="")


def import_text(db, text: str, list_name: str = "newsletter") -> ImportReport:
    return import_csv(db, csv_stream(text), list_name)


def contact_rows(db) -> list[dict]:
    return db.execute("SELECT * FROM contacts ORDER BY id").fetchall()


def members(db, list_name: str = "newsletter") -> dict[str, str]:
    rows = db.execute(
        "SELECT c.email, m.status FROM list_members m JOIN contacts c ON c.id = m.contact_id"
        " JOIN lists l ON l.id = m.list_id WHERE l.name = %s",
        (list_name,),
    ).fetchall()
    return {r["email"]: r["status"] for r in rows}


def add_contact(db, email: str, **fields) -> int:
    return db.execute(
        "INSERT INTO contacts (email, first_name, last_name) VALUES (%s, %s, %s) RETURNING id",
        (email, fields.get("first_name"), fields.get("last_name")),
    ).fetchone()["id"]


def test_new_contacts_are_inserted_and_join_a_new_list(db):
    report = import_text(db, "email,first_name,last_name\nann@example.com,Ann,Lee\nbob@example.com,Bob,\n")

    assert report.counts() == {
        "rows": 2, "inserted": 2, "updated": 0, "unchanged": 0, "added_to_list": 2, "already_member": 0,
        "invalid": 0, "duplicates": 0, "unsubscribed_kept": 0, "suppressed": 0,
    }
    assert report.list_created is True
    assert [(r["email"], r["first_name"], r["last_name"]) for r in contact_rows(db)] == [
        ("ann@example.com", "Ann", "Lee"), ("bob@example.com", "Bob", None),
    ]
    assert members(db) == {"ann@example.com": "subscribed", "bob@example.com": "subscribed"}


def test_upsert_matches_existing_contact_case_insensitively(db):
    contact_id = add_contact(db, "Ann@Example.com", first_name="Annie")

    report = import_text(db, "email,first_name\nANN@EXAMPLE.COM,Ann\n")

    assert (report.inserted, report.updated) == (0, 1)
    rows = contact_rows(db)
    assert len(rows) == 1
    # Same contact, new name; the stored spelling of the address is kept.
    assert (rows[0]["id"], rows[0]["email"], rows[0]["first_name"]) == (contact_id, "Ann@Example.com", "Ann")
    assert rows[0]["updated_at"] > rows[0]["created_at"]


def test_new_address_is_stored_in_normalised_form(db):
    import_text(db, "email\nAnn@EXAMPLE.com\nbo@BÜCHER.de\n")

    # email-validator lowercases (and IDNA-normalises) the domain, never the local part.
    assert [r["email"] for r in contact_rows(db)] == ["Ann@example.com", "bo@bücher.de"]


def test_invalid_addresses_and_duplicates_are_reported_with_line_numbers_and_the_rest_imported(db):
    text = (
        "email,first_name\n"          # 1
        "ann@example.com,Ann\n"       # 2
        "not-an-address,X\n"          # 3
        ",No address\n"               # 4
        "\n"                          # 5 blank: not a row
        "ANN@example.com,Second\n"    # 6 duplicate of 2
        "bob@localhost,Y\n"           # 7 no dot in the domain
        "bob@example.com,Bob,,\n"     # 8 trailing empty cells are only commas
        "ann@example.com,Third\n"     # 9 duplicate of 2
        "ü@example.com,Z\n"           # 10 SES cannot send to non-ASCII local parts
        "cy@example.com,Cy,extra\n"   # 11 more cells than columns
    )

    report = import_text(db, text)

    assert report.rows == 9
    assert [(p.line, p.email) for p in report.invalid_rows] == [
        (3, "not-an-address"), (4, ""), (7, "bob@localhost"), (10, "ü@example.com"), (11, "cy@example.com"),
    ]
    assert all(p.reason for p in report.invalid_rows)
    assert "3 cells" in report.invalid_rows[-1].reason
    assert report.duplicate_rows == [
        Problem(6, "ANN@example.com", "duplicate of line 2"),
        Problem(9, "ann@example.com", "duplicate of line 2"),
    ]
    assert (report.invalid, report.duplicates, report.inserted) == (5, 2, 2)
    # The first occurrence wins.
    assert [(r["email"], r["first_name"]) for r in contact_rows(db)] == [("ann@example.com", "Ann"),
                                                                         ("bob@example.com", "Bob")]
    assert [(kind, p.line) for kind, p in report.problems()] == [
        ("invalid", 3), ("invalid", 4), ("duplicate", 6), ("invalid", 7), ("duplicate", 9), ("invalid", 10),
        ("invalid", 11),
    ]


def test_reimporting_the_same_file_changes_nothing(db):
    text = "email,first_name,last_name,plan\nann@example.com,Ann,Lee,gold\nbob@example.com,,,\nbad,x,y,z\n"
    import_text(db, text)
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('bob@example.com', 'complaint', 'ses')")
    snapshot = (
        contact_rows(db),
        db.execute("SELECT * FROM lists ORDER BY id").fetchall(),
        db.execute("SELECT * FROM list_members ORDER BY contact_id").fetchall(),
        db.execute("SELECT * FROM suppressions").fetchall(),
    )
    versions = db.execute("SELECT id, xmin::text AS xmin FROM contacts ORDER BY id").fetchall()

    report = import_text(db, text)

    assert (report.inserted, report.updated, report.unchanged) == (0, 0, 2)
    assert (report.added_to_list, report.already_member, report.list_created) == (0, 2, False)
    assert snapshot == (
        contact_rows(db),
        db.execute("SELECT * FROM lists ORDER BY id").fetchall(),
        db.execute("SELECT * FROM list_members ORDER BY contact_id").fetchall(),
        db.execute("SELECT * FROM suppressions").fetchall(),
    )
    # Not even a new row version: the upsert did not write the unchanged rows.
    assert db.execute("SELECT id, xmin::text AS xmin FROM contacts ORDER BY id").fetchall() == versions


def test_only_changed_rows_are_updated(db):
    import_text(db, "email,first_name\nann@example.com,Ann\nbob@example.com,Bob\n")
    before = {r["email"]: r["updated_at"] for r in contact_rows(db)}

    report = import_text(db, "email,first_name\nann@example.com,Ann\nbob@example.com,Robert\n")

    assert (report.updated, report.unchanged) == (1, 1)
    after = {r["email"]: r["updated_at"] for r in contact_rows(db)}
    assert after["ann@example.com"] == before["ann@example.com"]
    assert after["bob@example.com"] > before["bob@example.com"]


def test_empty_cells_never_erase_and_attributes_are_merged(db):
    import_text(db, "email,first_name,last_name,plan,city\nann@example.com,Ann,Lee,gold,Oslo\n")

    report = import_text(db, "email,first_name,last_name,plan,team\nann@example.com,,,platinum,\n")

    assert report.updated == 1
    row = contact_rows(db)[0]
    assert (row["first_name"], row["last_name"]) == ("Ann", "Lee")
    assert row["attributes"] == {"plan": "platinum", "city": "Oslo"}


def test_extra_columns_become_string_attributes_under_normalised_names(db):
    text = " EMAIL ,First Name,LAST_NAME,Customer Id, Plan ,Signed-Up At,\nann@example.com,Ann,Lee,00042, gold ,,\n"

    import_text(db, text)

    row = contact_rows(db)[0]
    assert (row["first_name"], row["last_name"]) == ("Ann", "Lee")
    # Strings as written (leading zeros kept), empty cells omitted, the unnamed trailing column ignored.
    assert row["attributes"] == {"customer_id": "00042", "plan": "gold"}


def test_unsubscribed_member_stays_unsubscribed_and_is_reported(db):
    import_text(db, "email\nann@example.com\nbob@example.com\n")
    db.execute(
        "UPDATE list_members SET status = 'unsubscribed', unsubscribed_at = now()"
        " WHERE contact_id = (SELECT id FROM contacts WHERE email = 'ann@example.com')"
    )

    report = import_text(db, "email\ncy@example.com\nANN@example.com\nbob@example.com\n")

    assert members(db) == {"ann@example.com": "unsubscribed", "bob@example.com": "subscribed",
                           "cy@example.com": "subscribed"}
    assert (report.added_to_list, report.already_member, report.unsubscribed_kept) == (1, 1, 1)
    assert [(p.line, p.email) for p in report.unsubscribed_rows] == [(3, "ANN@example.com")]
    assert "newsletter" in report.unsubscribed_rows[0].reason
    # Unsubscribed from one list is not unsubscribed from another.
    import_text(db, "email\nann@example.com\n", list_name="product-updates")
    assert members(db, "product-updates") == {"ann@example.com": "subscribed"}


def test_suppression_is_not_cleared_and_is_reported(db):
    db.execute("INSERT INTO suppressions (email, reason, source) VALUES ('ann@example.com', 'hard_bounce', 'ses')")

    report = import_text(db, "email,first_name\nbob@example.com,Bob\nAnn@Example.com,Ann\n")

    assert db.execute("SELECT email, reason FROM suppressions").fetchall() == [
        {"email": "ann@example.com", "reason": "hard_bounce"}
    ]
    assert report.suppressed_rows == [
        Problem(3, "Ann@example.com", "suppressed (hard_bounce); the suppression stays")
    ]
    # The contact data itself is still imported: suppression decides sending, not whether we know the person.
    assert report.inserted == 2


def test_missing_email_column_is_a_clear_error_naming_the_columns_found(db):
    with pytest.raises(ValueError, match=r"no 'email' column; columns found: \['E-mail address', 'Name'\]"):
        import_text(db, "E-mail address,Name\nann@example.com,Ann\n")
    assert contact_rows(db) == []


def test_empty_file_and_clashing_headers_are_clear_errors(db):
    with pytest.raises(ValueError, match="empty"):
        import_text(db, "")
    with pytest.raises(ValueError, match="'first_name' more than once"):
        import_text(db, "email,First Name,first_name\n")


def test_utf8_bom_and_quoted_cells_with_commas_and_line_breaks(db):
    raw = (
        "\ufeffemail,first_name,note\r\n"
        'ann@example.com,"Lee, Ann","line one\r\nline two"\r\n'
        '"bob@example.com",Bob,"says ""hi"""\r\n'
        "broken,X,Y\r\n"
    ).encode("utf-8")
    # Decoded as plain utf-8 (not utf-8-sig) the BOM reaches the parser, which must still find `email`.
    stream = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline="")

    report = import_csv(db, stream, "newsletter")

    rows = contact_rows(db)
    assert [(r["email"], r["first_name"], r["attributes"]) for r in rows] == [
        ("ann@example.com", "Lee, Ann", {"note": "line one\r\nline two"}),
        ("bob@example.com", "Bob", {"note": 'says "hi"'}),
    ]
    # The quoted line break makes record 2 span lines 2-3, so the broken row is on line 5.
    assert [(p.line, p.email) for p in report.invalid_rows] == [(5, "broken")]


def test_file_that_is_not_utf8_fails_cleanly_and_imports_nothing(db):
    raw = "email,first_name\nann@example.com,Ann\nbob@example.com,J\xf6rg\n".encode("latin-1")
    stream = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8", newline="")

    with pytest.raises(ValueError, match="not UTF-8"):
        import_csv(db, stream, "newsletter")

    # One transaction: the rows already copied are gone with it, and so is the list.
    assert contact_rows(db) == []
    assert db.execute("SELECT count(*) AS n FROM lists").fetchone()["n"] == 0


def test_report_for_xcom_caps_problem_lists_but_keeps_the_counts(db):
    text = "email\n" + "".join(f"bad-{i}\n" for i in range(5)) + "ok@example.com\n"

    result = import_text(db, text).as_dict(cap=2)

    assert result["invalid"] == 5
    assert [p["line"] for p in result["invalid_rows"]] == [2, 3]
    assert result["problems_truncated"] is True
    assert (result["list"], result["inserted"]) == ("newsletter", 1)


def test_blank_list_name_is_refused(db):
    with pytest.raises(ValueError, match="list name"):
        import_text(db, "email\nann@example.com\n", list_name="  ")


def test_open_csv_reads_a_local_file_without_its_bom(tmp_path):
    path = tmp_path / "contacts.csv"
    path.write_bytes("\ufeffemail\r\nann@example.com\r\n".encode())

    with open_csv(str(path)) as stream:
        assert stream.read() == "email\r\nann@example.com\r\n"


@pytest.mark.parametrize(
    ("header", "name"),
    [(" Email ", "email"), ("First Name", "first_name"), ("LAST-NAME", "last_name"), ("Zip  Code", "zip_code")],
)
def test_header_names_ignore_case_and_spaces(header, name):
    assert normalise_header(header) == name


def test_query_loader_splits_named_blocks_and_drops_their_why_comments():
    parsed = queries.parse(
        "-- file preamble\n\n-- name: first\n-- why it is so: 100% on purpose\nSELECT 1\n\n"
        "-- name: second\nSELECT 2 -- kept\n",
        area="demo",
    )

    assert parsed == {"first": "SELECT 1", "second": "SELECT 2 -- kept"}
    with pytest.raises(KeyError, match=r"no query 'third' in queries/demo\.sql"):
        parsed["third"]
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- name: a\nSELECT 1\n-- name: a\nSELECT 2\n")


def test_query_loader_reads_each_area_once_and_refuses_paths():
    assert queries.load("contacts") is queries.load("contacts")
    assert "upsert-contacts" in queries.load("contacts")
    with pytest.raises(ValueError, match="area"):
        queries.load("../secrets")
    with pytest.raises(FileNotFoundError, match="known areas"):
        queries.load("no_such_area")
