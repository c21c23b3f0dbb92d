import pytest

from zpay.domain.errors import InvalidAmount
from zpay.domain.money import format_amount, parse_amount

U64 = 2**64 - 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("29.99", 29_990_000), ("0.000001", 1), ("1", 1_000_000), ("500", 500_000_000),
     ("18446744073709.551615", U64)],
)
def test_parses_decimal_strings_exactly(text: str, expected: int) -> None:
    assert parse_amount(text, decimals=6, max_base_units=U64) == expected


@pytest.mark.parametrize(
    ("text", "code"),
    [("1.0000001", "amount_precision_exceeded"), ("-1", "invalid_amount"),
     ("abc", "invalid_amount"), ("1e3", "invalid_amount"), ("", "invalid_amount"),
     (" 1", "invalid_amount"), ("01", "invalid_amount"), ("1.", "invalid_amount"),
     ("0", "invalid_amount"), ("18446744073709.551616", "amount_out_of_range"),
     ("9" * 500, "amount_out_of_range"), ("NaN", "invalid_amount"), ("Infinity", "invalid_amount")],
)
def test_refuses_bad_amounts(text: str, code: str) -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount(text, decimals=6, max_base_units=U64)
    assert info.value.code == code


def test_refuses_non_strings_including_floats() -> None:
    for value in (1.5, 2, None, True):
        with pytest.raises(InvalidAmount):
            parse_amount(value, decimals=6, max_base_units=U64)


def test_formats_with_all_decimals_and_round_trips() -> None:
    assert format_amount(29_990_000, decimals=6) == "29.990000"
    assert format_amount(0, decimals=6) == "0.000000"
    for value in (1, 10**18 + 7, U64):
        assert parse_amount(format_amount(value, decimals=6), decimals=6,
                            max_base_units=U64) == value
    with pytest.raises(TypeError):
        format_amount(1.0, decimals=6)  # type: ignore[arg-type]
