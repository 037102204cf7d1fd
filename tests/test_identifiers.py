import re

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from nhs_number import is_valid
from nhs_number.validate import calculate_checksum

from wobble.ingest.identifiers import (
    check_digit,
    is_valid_nhs_number,
    pseudonymise,
    synthetic_nhs_numbers,
)


def test_synthetic_numbers_are_valid_distinct_and_reserved():
    nums = synthetic_nhs_numbers(np.random.default_rng(1), 50_000)
    assert len(set(nums.tolist())) == nums.size
    assert nums.min() >= 9_000_000_000 and nums.max() <= 9_999_999_999
    sample = nums[:: 97].tolist()
    assert all(is_valid(str(n)) for n in sample)  # the nhs-number library agrees
    assert all(is_valid_nhs_number(str(n)) for n in sample)


@given(st.integers(min_value=100_000_000, max_value=999_999_999))
def test_vectorised_check_digit_matches_reference(prefix):
    """The nhs-number library's checksum is the reference (its is_valid also checks Scottish
    CHI dates, which is about regions, not check digits)."""
    c = int(check_digit(np.array([prefix], dtype=np.int64))[0])
    assert c == calculate_checksum(str(prefix))
    if prefix >= 311_300_000:
        assert is_valid(f"{prefix}{c}") == (c != 10)


@given(st.text(max_size=14))
def test_validator_never_raises_and_agrees_with_library(text):
    ours = is_valid_nhs_number(text)
    # Excel's text forms: '9434765919 and ="9434765919"
    if form := re.fullmatch(r"'(.*)|=\"(.*)\"", text.strip(" \t\n\f\r\u00a0"), re.DOTALL):
        text = form[1] if form[1] is not None else form[2]
    digits = text.replace(" ", "").replace("-", "")
    # the whole number as Excel writes a number column: '9434765919.0', '9.434765919E+09'
    if excel := re.fullmatch(r"([0-9]{10})\.0*", text.strip()):
        digits = excel[1]
    elif excel := re.fullmatch(r"([0-9])\.([0-9]{9})[eE]\+?0*9", text.strip()):
        digits = excel[1] + excel[2]
    if len(digits) == 10 and digits.isascii() and digits.isdigit() and digits >= "3113000000":
        assert ours == is_valid(digits)
    else:
        assert ours is False


def test_pseudonym_is_hmac_sha256_prefix():
    import hashlib
    import hmac

    key = b"k" * 20
    expected = hmac.new(key, b"9434765919", hashlib.sha256).hexdigest()[:16]
    assert pseudonymise(key, "9434765919") == expected
    assert pseudonymise(b"other-key-1234567890", "9434765919") != expected


@given(st.integers(min_value=3_113_000_000, max_value=9_999_999_999), st.sampled_from(["{n}.0", "{n}.00", "{n}",
       "{a}.{b}E+09", "{a}.{b}e9", " {n}.0 ", "'{n}", '="{n}"', "'{n}.0", ' ="{a}{b}" ']))
def test_excel_forms_of_a_number_are_that_number(n, form):
    """Written as Excel saves a number column, a number is valid exactly when it is."""
    text = form.format(n=n, a=str(n)[0], b=str(n)[1:])
    assert is_valid_nhs_number(text) == is_valid(str(n))
