"""`tunetrain.parsing`: what counts as an int or a float in a config value, and each keyword that changes it."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from tunetrain.parsing import parse_float, parse_int

NOT_NUMBERS = [None, [1], {"a": 1}, b"1", object(), 1j]


# --- parse_int ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, *NOT_NUMBERS])
def test_int_rejects_bools_and_non_numbers(value):
    assert parse_int(value) is None
    assert parse_int(value, strings=True) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, 0), (-7, -7), (10**30, 10**30), (-(10**400), -(10**400)), (np.int64(5), 5), (3.0, 3), (-2.0, -2),
     (np.float32(4.0), 4), (Fraction(6, 2), 3), (1e300, int(1e300))],
)  # fmt: skip
def test_int_takes_ints_of_any_size_and_whole_floats(value, expected):
    number = parse_int(value)
    assert number == expected
    assert type(number) is int


@pytest.mark.parametrize("value", [2.5, -0.1, math.nan, math.inf, -math.inf, Fraction(1, 2)])
def test_int_rejects_fractions_and_non_finite_floats(value):
    assert parse_int(value) is None
    assert parse_int(value, strings=True) is None


@pytest.mark.parametrize("value", ["12", "1e3", "3.0", " 4 "])
def test_int_rejects_strings_by_default(value):
    assert parse_int(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("12", 12), (" -4 ", -4), ("1_000", 1000), ("1e3", 1000), ("3.0", 3), ("1" * 40, int("1" * 40))],
)
def test_int_takes_numeric_strings_with_strings(value, expected):
    assert parse_int(value, strings=True) == expected


@pytest.mark.parametrize("value", ["ten", "", "1.5", "nan", "inf", "1e400", "9" * 5000])
def test_int_with_strings_rejects_other_strings(value):
    assert parse_int(value, strings=True) is None


# --- parse_float ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, *NOT_NUMBERS])
def test_float_rejects_bools_and_non_numbers(value):
    assert parse_float(value) is None
    assert parse_float(value, strings=True, keep_ints=True) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, 0.5), (2, 2.0), (-3, -3.0), (np.float32(0.25), 0.25), (np.int64(7), 7.0), (Fraction(1, 4), 0.25)],
)
def test_float_takes_real_numbers_as_floats(value, expected):
    number = parse_float(value)
    assert number == expected
    assert type(number) is float


def test_float_reads_an_int_past_the_float_range_as_an_infinity():
    assert parse_float(10**400) == math.inf
    assert parse_float(-(10**400)) == -math.inf


def test_float_rejects_strings_by_default():
    assert parse_float("1e-4") is None
    assert parse_float("0.5") is None


@pytest.mark.parametrize(("value", "expected"), [("1e-4", 1e-4), ("0.5", 0.5), (" 2 ", 2.0), ("1e3", 1000.0)])
def test_float_takes_numeric_strings_with_strings(value, expected):
    assert parse_float(value, strings=True) == expected


@pytest.mark.parametrize("value", ["", "abc", "1,5", "0x10"])
def test_float_with_strings_rejects_other_strings(value):
    assert parse_float(value, strings=True) is None


def test_non_finite_values_pass_unless_finite():
    assert math.isnan(parse_float(math.nan))
    assert parse_float(-math.inf) == -math.inf
    assert parse_float("inf", strings=True) == math.inf
    assert math.isnan(parse_float("nan", strings=True))
    for value in (math.nan, math.inf, -math.inf, 10**400):
        assert parse_float(value, finite=True) is None
    assert parse_float("-inf", strings=True, finite=True) is None
    assert parse_float(1e308, finite=True) == 1e308


def test_keep_ints_returns_an_int_as_it_is():
    assert type(parse_float(3, keep_ints=True)) is int
    assert parse_float(10**400, keep_ints=True) == 10**400  # exact, though past the float range
    assert parse_float(np.int64(2), keep_ints=True) == 2
    assert type(parse_float(np.int64(2), keep_ints=True)) is int
    assert type(parse_float(3.0, keep_ints=True)) is float  # a float stays a float
    assert type(parse_float("3", strings=True, keep_ints=True)) is float  # a string is read as a float


def test_keep_ints_with_finite_rejects_an_int_past_the_float_range():
    assert parse_float(10**400, keep_ints=True, finite=True) is None
    assert parse_float(10**300, keep_ints=True, finite=True) == 10**300
