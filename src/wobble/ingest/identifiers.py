"""NHS numbers and pseudonyms, in Python and as the DuckDB SQL that ingest runs.

An NHS number is ten digits whose last is a modulus-11 check digit over the first nine
(weights 10 down to 2); spaces, tabs, no-break spaces and hyphens between digits are allowed
and removed. A pseudonym is the first 16 hex characters of HMAC-SHA256(key, identifier); the key
comes from the environment, never from the repo. The SQL versions below must agree with the
Python ones exactly: property tests drive both with arbitrary text.
"""

from __future__ import annotations

import hashlib
import hmac
import re

import numpy as np

_WEIGHTS = np.arange(10, 1, -1, dtype=np.int64)
# Synthetic people draw prefixes below this; the block above it is kept for numbers that
# must belong to nobody on the register (records for unknown people).
STRANGER_PREFIX_FROM = 999_999_000
# Separators people and systems put inside NHS numbers ("943 476 5919", "943-476-5919"). The
# SQL pattern below is the same class in RE2's spelling.
_NON_DIGIT = re.compile("[\t\n\f\r \u00a0-]")
_NON_DIGIT_SQL = "[\\t\\n\\f\\r \\x{00A0}-]"
# Excel saves a number column as a decimal ("9434765919.0") or, in scientific notation, as
# "9.434765919E+09". Either is the ten-digit number when all ten digits are written; a fraction,
# or a mantissa with digits lost ("9.43477E+09": which number was it?), is not. Matched on the
# value without surrounding white space (`_EDGES`), in Python and SQL alike.
_EXCEL = re.compile(r"([0-9]{10})\.0*|([0-9])\.([0-9]{9})[eE]\+?0*9")
_EXCEL_SQL = r"^(?:([0-9]{10})\.0*|([0-9])\.([0-9]{9})[eE]\+?0*9)$"
_EDGES = " \t\n\f\r\u00a0"
# Excel keeps a number as text, every digit kept, as '9434765919 (a leading apostrophe) or
# ="9434765919" (a formula); the value inside is read as any other. Matched on the value without
# surrounding white space, once (a form inside a form is not a number).
_TEXT_FORM = re.compile(r"'(.*)|=\"(.*)\"", re.DOTALL)
_TEXT_FORM_SQL = "^(?s:''(.*)|=\"(.*)\")$"  # as it stands in a SQL string literal


def check_digit(first_nine: np.ndarray) -> np.ndarray:
    """Check digits for an int64 array of 9-digit prefixes; 10 means 'no valid number'."""
    digits = (first_nine[:, None] // (10 ** np.arange(8, -1, -1, dtype=np.int64))) % 10
    remainder = (digits * _WEIGHTS).sum(axis=1) % 11
    check = 11 - remainder
    return np.where(check == 11, 0, check)


def nhs_digits(value: str) -> str:
    """The value as an NHS number's digits: separators removed, or the whole number Excel wrote
    as a decimal (`_EXCEL`), either also inside Excel's text forms (`_TEXT_FORM`); still to be
    checked (`is_valid_nhs_number`)."""
    if m := _TEXT_FORM.fullmatch(value.strip(_EDGES)):
        value = "".join(g or "" for g in m.groups())
    if "." in value and (m := _EXCEL.fullmatch(value.strip(_EDGES))):
        return "".join(g or "" for g in m.groups())
    return _NON_DIGIT.sub("", value)


def is_valid_nhs_number(value: str) -> bool:
    """True when `value` (spaces and hyphens allowed; the whole number as an Excel decimal too) is a
    ten-digit number with a valid check digit."""
    s = nhs_digits(value)
    if len(s) != 10 or not s.isascii() or not s.isdigit():
        return False
    total = sum(int(d) * w for d, w in zip(s[:9], range(10, 1, -1), strict=True))
    check = 11 - total % 11
    check = 0 if check == 11 else check
    return check != 10 and check == int(s[9])


def synthetic_nhs_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """`n` distinct valid NHS numbers (int64) from 900 000 0000 to 999 999 9999.

    That range is reserved for test and synthetic patients and never issued to a real
    person, so nothing synthetic can collide with a real record.
    """
    out = np.empty(0, dtype=np.int64)
    while out.size < n:
        want = int((n - out.size) * 1.15) + 16
        prefix = rng.integers(900_000_000, STRANGER_PREFIX_FROM, size=want, dtype=np.int64)
        check = check_digit(prefix)
        ok = check != 10
        numbers = prefix[ok] * 10 + check[ok]
        out = np.concatenate([out, numbers])
        # keep first occurrences in draw order so the result is deterministic by seed
        _, first = np.unique(out, return_index=True)
        out = out[np.sort(first)]
    return out[:n]


def pseudonymise(key: bytes, identifier: str) -> str:
    """HMAC-SHA256 pseudonym, first 16 hex characters."""
    return hmac.new(key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


# Anything written like an NHS number (ten digits, or 3-3-4 with a space or hyphen) that is not
# part of a longer run of digits: removed from any text kept about a quarantined row, in SQL and in
# Python alike. Letters and '_' may touch it: ids such as '9434765919_20261101' or 'NHS9434765919'
# hold one too (a word boundary, `\b`, missed both).
NHS_LIKE = re.compile(r"(?<![0-9])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}(?![0-9])", re.ASCII)
# DuckDB's regular expressions (RE2) have no look-around: the neighbours are matched and put back.
NHS_LIKE_SQL = r"(^|[^0-9])[0-9]{3}[ -]?[0-9]{3}[ -]?[0-9]{4}([^0-9]|$)"
NUMBER_REMOVED = "[number removed]"


def without_numbers_sql(text: str) -> str:
    """SQL: the text with anything written like an NHS number replaced. Twice: a neighbour one
    match takes cannot begin the next ('9434765919_9434765920'), and the second pass finds those."""
    once = f"regexp_replace({text}, '{NHS_LIKE_SQL}', '\\1{NUMBER_REMOVED}\\2', 'g')"
    return f"regexp_replace({once}, '{NHS_LIKE_SQL}', '\\1{NUMBER_REMOVED}\\2', 'g')"


def record_id_sql(text: str) -> str:
    """SQL: a source's record id as the warehouse keeps it. An id that holds anything written like
    an NHS number (some systems build ids from one: '9434765919-enc1') is replaced by its
    pseudonym ('pseudonym:' + 16 hex), stable for the key, so corrections and retractions still
    find it; any other id is kept as the source wrote it. Needs `wobble_pseudonym`."""
    return (f"CASE WHEN regexp_matches({text}, '{NHS_LIKE_SQL}') "
            f"THEN 'pseudonym:' || wobble_pseudonym('record:' || {text}) ELSE {text} END")


def hmac_pads(key: bytes) -> tuple[bytes, bytes]:
    """HMAC-SHA256's inner and outer padded keys (RFC 2104), for computing HMACs in SQL."""
    k = hashlib.sha256(key).digest() if len(key) > 64 else key
    k = k.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in k), bytes(b ^ 0x5C for b in k)


def install_sql_pseudonym(con, key: bytes) -> None:
    """Define `wobble_pseudonym(text)` on a DuckDB connection: the same value as `pseudonymise`.

    The padded keys live in session variables, in memory only; the macro is temporary.
    """
    ipad, opad = hmac_pads(key)
    con.execute("SET VARIABLE wobble_ipad = ?::BLOB", [ipad])
    con.execute("SET VARIABLE wobble_opad = ?::BLOB", [opad])
    con.execute(
        "CREATE OR REPLACE TEMP MACRO wobble_pseudonym(v) AS left(sha256(getvariable('wobble_opad') "
        "|| unhex(sha256(getvariable('wobble_ipad') || encode(v)))), 16)"
    )


def nhs_normalised_sql(text: str) -> str:
    """SQL: `nhs_digits`: the text with separators removed, or an Excel decimal's whole number (still
    text; valid only if `nhs_valid_sql` says so), also inside Excel's text forms. Only text with a
    quote or '=' is tried as a text form, and only text with a '.' as a decimal."""
    edged = f"trim({text}, {_sql_chars(_EDGES)})"
    inner = f"regexp_replace({edged}, '{_TEXT_FORM_SQL}', '\\1\\2')"
    return (f"CASE WHEN (contains({text}, '''') OR contains({text}, '=')) "
            f"AND regexp_matches({edged}, '{_TEXT_FORM_SQL}') "
            f"THEN {_plain_normalised_sql(inner)} ELSE {_plain_normalised_sql(text)} END")


def _plain_normalised_sql(text: str) -> str:
    """SQL: `nhs_normalised_sql` for text not in a text form."""
    edged = f"trim({text}, {_sql_chars(_EDGES)})"
    return (f"CASE WHEN contains({text}, '.') AND regexp_matches({edged}, '{_EXCEL_SQL}') "
            f"THEN regexp_replace({edged}, '{_EXCEL_SQL}', '\\1\\2\\3') "
            f"ELSE regexp_replace({text}, '{_NON_DIGIT_SQL}', '', 'g') END")


def _sql_chars(chars: str) -> str:
    """SQL: a string of these characters, spelt with chr() (no raw control characters in SQL)."""
    return "(" + " || ".join(f"chr({ord(c)})" for c in chars) + ")"


def nhs_invalid_detail_sql(raw: str) -> str:
    """SQL: a quarantine detail for an NHS number that is not valid, saying what it looked like with
    no digit shown: its shape ('#' for each digit) and why, as `nhs_number: '##########.#' (a decimal,
    not a whole number)`; a value not written as a number is only measured. NULL for ten digits
    (separators allowed) with a wrong check digit: the reason alone says that."""
    t = f"trim({raw}, {_sql_chars(_EDGES)})"
    n = nhs_normalised_sql(raw)
    why = (f"CASE WHEN regexp_full_match({n}, '[0-9]{{10}}') THEN 'check digit does not match' "
           f"WHEN regexp_full_match({t}, '[0-9]*\\.?[0-9]+[eE][+-]?[0-9]+') "
           "THEN 'scientific notation without all ten digits: save the column as text' "
           f"WHEN regexp_full_match({t}, '[0-9]*\\.[0-9]+') THEN 'a decimal, not a whole number' "
           f"WHEN regexp_full_match({n}, '[0-9]+') THEN length({n}) || ' digits, not 10' ELSE 'not ten digits' END")
    number_like = f"regexp_full_match({t}, '[0-9eE.+/ \\t\\x{{00A0}}''=\"-]+')"  # Excel's text forms too
    shape = f"'''' || left(translate({t}, '0123456789', '##########'), 30) || ''''"
    return (f"CASE WHEN regexp_full_match({n}, '[0-9]{{10}}') AND NOT contains({t}, '.') THEN NULL "
            f"ELSE 'nhs_number: ' || CASE WHEN {number_like} THEN {shape} || ' (' || ({why}) || ')' "
            f"ELSE 'not written as a number (length ' || length({t}) || ')' END END")


def nhs_valid_sql(n: str) -> str:
    """SQL: is the normalised text `n` ten ASCII digits with a valid check digit?"""
    total = " + ".join(f"{10 - i} * (ascii(substr({n}, {i + 1}, 1)) - 48)" for i in range(9))
    return (
        f"coalesce(regexp_full_match({n}, '[0-9]{{10}}') AND "
        f"(11 - ({total}) % 11) % 11 = ascii(substr({n}, 10, 1)) - 48, false)"
    )
