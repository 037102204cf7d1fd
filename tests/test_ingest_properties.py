"""Property tests: the validators, driven with arbitrary input.

The SQL that ingest runs must agree with the plain Python definitions (NHS number check digit,
HMAC pseudonyms, date parsing), and a file of any content must either fail with one line or
reconcile: every row loaded, quarantined with a reason, or a duplicate.
"""

from __future__ import annotations

import csv
import io
import string
from datetime import datetime

import duckdb
import pytest
from conftest import TEST_KEY
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ingest_kit import VISITS_HEADER, broken, numbers, project, register, stranger

from wobble.core.config import load_config
from wobble.core.errors import WobbleError
from wobble.ingest import ingest
from wobble.ingest.identifiers import (
    NHS_LIKE,
    NUMBER_REMOVED,
    install_sql_pseudonym,
    is_valid_nhs_number,
    nhs_normalised_sql,
    nhs_valid_sql,
    pseudonymise,
    without_numbers_sql,
)
from wobble.ingest.validate import REASONS

PEOPLE = numbers(4, seed=5)


@pytest.fixture(scope="module")
def con():
    c = duckdb.connect()
    yield c
    c.close()


def _sql_valid(con, values: list[str]) -> list[bool]:
    con.execute("CREATE OR REPLACE TEMP TABLE v AS SELECT unnest(?::VARCHAR[]) AS raw, "
                "generate_subscripts(?::VARCHAR[], 1) AS i", [values, values])
    n = nhs_normalised_sql("raw")
    return [r[0] for r in con.execute(f"SELECT {nhs_valid_sql(n)} FROM v ORDER BY i").fetchall()]


# Text that looks like an NHS number some of the time: digits with separators, and anything else.
_separators = st.sampled_from(["", " ", "-", "\t", "\u00a0", "  ", "/", ".", "\u2009"])
_digits = st.text(alphabet=string.digits + "٣０", min_size=8, max_size=12)
nhs_like = st.one_of(
    st.builds(lambda n, s1, s2: f"{n[:3]}{s1}{n[3:6]}{s2}{n[6:]}",
              st.sampled_from(PEOPLE + [broken(p) for p in PEOPLE]), _separators, _separators),
    st.builds(lambda d, s: s.join([d[:3], d[3:]]), _digits, _separators),
    st.builds(lambda n, form: form.format(n), st.sampled_from(PEOPLE + [broken(p) for p in PEOPLE]),  # Excel's text
              st.sampled_from(["'{}", '="{}"', " '{} ", "''{}", '"{}"', '="{}', "'{}.0", "='{}'"])),  # forms, and not
    st.text(max_size=16),
)


@given(st.lists(nhs_like, min_size=1, max_size=40))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sql_check_digit_agrees_with_python(con, values):
    assert _sql_valid(con, values) == [is_valid_nhs_number(v) for v in values]


@given(st.lists(st.text(max_size=40), min_size=1, max_size=20), st.binary(min_size=16, max_size=130))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_sql_pseudonym_agrees_with_python_hmac(con, values, key):
    values = [v for v in values if "\x00" not in v]
    assume(values)
    install_sql_pseudonym(con, key)
    got = [r[0] for r in con.execute(
        "SELECT wobble_pseudonym(v) FROM (SELECT unnest(?::VARCHAR[]) AS v, generate_subscripts(?::VARCHAR[], 1) AS i) "
        "ORDER BY i", [values, values]).fetchall()]
    assert got == [pseudonymise(key, v) for v in values]


@given(st.lists(st.builds(lambda a, n, b: a + n + b, st.text(alphabet=string.printable, max_size=6), nhs_like,
                          st.text(alphabet=string.printable, max_size=6)), min_size=1, max_size=20))
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_numbers_are_removed_from_kept_text_as_python_removes_them(con, values):
    values = [v for v in values if "\x00" not in v]
    assume(values)
    got = [r[0] for r in con.execute(
        f"SELECT {without_numbers_sql('v')} FROM (SELECT unnest(?::VARCHAR[]) AS v, "
        "generate_subscripts(?::VARCHAR[], 1) AS i) ORDER BY i", [values, values]).fetchall()]
    expected = [NHS_LIKE.sub(NUMBER_REMOVED, v) for v in values]
    assert got == expected
    for v in expected:  # and what is left holds no valid NHS number written the usual ways
        assert not any(is_valid_nhs_number(m) for m in NHS_LIKE.findall(v))


# ---------------------------------------------------------------------------------------------
# Whole files
# ---------------------------------------------------------------------------------------------

_field = st.one_of(
    st.sampled_from(["", "DN", "CMHT", "Seen", "DNA", "Home", "Tel", "S1", "2025-03-01 10:00",
                     "2025-02-30 10:00", "1899-12-31 23:59", "V1", "V2", *PEOPLE, broken(PEOPLE[0]), stranger()]),
    st.text(alphabet=string.printable, max_size=12),
)
_row = st.lists(_field, min_size=6, max_size=10)


def _write_csv(rows: list[list[str]], quoted: bool) -> str:
    if quoted:
        buf = io.StringIO()
        # every field quoted: Python's writer leaves a lone "\r" bare when rows end in "\n", and a
        # bare "\r" is a line break to every CSV reader, so that file would not be well formed
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        w.writerow(VISITS_HEADER.split(","))
        w.writerows(rows)
        return buf.getvalue()
    return VISITS_HEADER + "\n" + "\n".join(",".join(r) for r in rows) + "\n"


@given(st.lists(_row, max_size=12), st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_file_fails_in_one_line_or_reconciles(tmp_path_factory, rows, quoted):
    root = tmp_path_factory.mktemp("prop")
    cfg = load_config(project(root, files={"register.csv": register(PEOPLE, opted_out=(PEOPLE[3],)),
                                           "visits.csv": _write_csv(rows, quoted)}))
    try:
        result = ingest(cfg, key=TEST_KEY.encode(), report=False, only=["register", "visits"])
    except WobbleError as exc:  # a problem with the run as a whole is still one line
        assert "\n" not in str(exc)
        return
    f = next(f for f in result.files if f.file == "visits.csv")
    if f.status == "failed":
        assert f.error and "\n" not in f.error and "Traceback" not in f.error
        return
    assert f.rows_in == f.rows_loaded + f.rows_quarantined + f.rows_duplicate
    if quoted and all(len(r) == 8 for r in rows):  # well formed: every record is one row in
        assert f.rows_in == len(rows)
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        q = con.sql("SELECT reason, count(*) FROM quarantine WHERE file = 'visits.csv' GROUP BY ALL").fetchall()
        lines = con.execute("SELECT min(line), max(line), count(DISTINCT line), count(*) FROM quarantine "
                            "WHERE file = 'visits.csv'").fetchone()
        loaded = con.execute("SELECT count(*) FROM contacts").fetchone()[0]
    assert set(dict(q)) <= set(REASONS)
    assert sum(n for r, n in q if r != "duplicate") == f.rows_quarantined
    assert loaded == f.rows_loaded
    if lines[3]:
        assert lines[0] >= 2 and lines[2] == lines[3]  # one reason per line, after the header


_formats = st.sampled_from(["%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M", "%d-%b-%Y"])


@given(_formats, st.lists(st.one_of(
    st.datetimes(min_value=datetime(1890, 1, 1), max_value=datetime(2030, 12, 31)),
    st.text(alphabet=string.digits + "/-: abcJanFebMar", max_size=18)), min_size=1, max_size=8))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_dates_parse_as_python_reads_them_or_are_quarantined(tmp_path_factory, fmt, values):
    root = tmp_path_factory.mktemp("dates")
    texts = [v.strftime(fmt) if isinstance(v, datetime) else v.replace(",", "") for v in values]
    rows = [f"V{i},{PEOPLE[0]},{t},,DN,Seen,Home,S1" for i, t in enumerate(texts)]
    cfg_path = project(root, files={"register.csv": register(PEOPLE),
                                    "visits.csv": VISITS_HEADER + "\n" + "\n".join(rows) + "\n"})
    text = cfg_path.read_text().replace('timestamp_format = "%Y-%m-%d %H:%M"\n\n\n[sources.visits.columns]',
                                        f'timestamp_format = "{fmt}"\n\n\n[sources.visits.columns]')
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    result = ingest(cfg, key=TEST_KEY.encode(), report=False, only=["register", "visits"])
    f = next(f for f in result.files if f.file == "visits.csv")
    now = datetime.now()
    expected = {}
    for i, t in enumerate(texts):
        try:
            expected[i] = datetime.strptime(t.strip(), fmt)
        except ValueError:
            expected[i] = None
    good = {i for i, e in expected.items() if e is not None and datetime(1900, 1, 1) <= e <= now}
    if not good:  # no row loadable: the file fails whole, to be read again (test_ingest_mistakes)
        assert f.status == "failed" and f.error.startswith("every row was quarantined"), f.error
        return
    assert f.status == "loaded", f.error
    with duckdb.connect(str(cfg.warehouse), read_only=True) as con:
        loaded = dict(con.sql("SELECT contact_id, occurred_at FROM contacts").fetchall())
        quarantined = dict(con.sql("SELECT line, reason FROM quarantine").fetchall())
    for i, t in enumerate(texts):
        if i in good:
            assert loaded.get(f"V{i}") == expected[i], t
        else:
            assert quarantined.get(i + 2) in ("impossible_date", "missing_field"), t
