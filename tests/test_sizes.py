"""tierd.sizes: the size grammar every capacity goes through, and the human format."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from tierd.errors import ConfigError
from tierd.sizes import GiB, KiB, MAX_SIZE, MiB, PiB, TiB, UNITS, format_size, parse_size

KEY = "--dram"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("4096", 4096),
        (" 4096 ", 4096),
        ("1_000_000", 1_000_000),
        ("512B", 512),
        ("8GiB", 8 * GiB),
        ("8 GiB", 8 * GiB),
        ("8gib", 8 * GiB),
        ("8GIB", 8 * GiB),
        ("8GB", 8 * 10**9),
        ("8000MB", 8 * 10**9),
        ("8 gb", 8 * 10**9),
        ("1KB", 1000),
        ("1KiB", KiB),
        ("2 TiB", 2 * TiB),
        ("3TB", 3 * 10**12),
        ("1PiB", PiB),
        ("1.5GiB", 3 * GiB // 2),
        (".5 MiB", MiB // 2),
        ("2.", 2),
        ("0.1KiB", 102),  # 102.4 rounds down
        ("1.9", 1),  # fractional bytes round down too
        (4096, 4096),
        (8e9, 8 * 10**9),  # a whole float, as YAML/TOML may give
    ],
)
def test_parse_examples(text: str | int, expected: int) -> None:
    assert parse_size(text, key=KEY) == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "lots", "-1", "-8GiB", "8 GiBs", "8 XB", "1e9", "8GiB8", "GiB", "1.2.3", "8,5GiB",
     "0x10", "8 Gi B", "1/2GiB", "nan", "inf", "\u0668GiB", "9" * 100, "99999999999PiB",
     -1, 1.5, True, None, [8], {"size": 8}],
)
def test_parse_rejects_bad_values_naming_the_key(text: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(text, key=KEY)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{KEY}=")


@pytest.mark.parametrize("letter", ["k", "M", "g", "T", "p"])
def test_single_letter_units_are_ambiguous_and_the_error_offers_both(letter: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(f"8{letter}", key="TIERD_NVME")
    message = str(info.value)
    assert "TIERD_NVME" in message and "ambiguous" in message
    assert f"8{letter.upper()}iB" in message and f"8{letter.upper()}B" in message


def test_negative_is_named_as_such() -> None:
    with pytest.raises(ConfigError, match="negative"):
        parse_size("-5GiB", key=KEY)


def test_largest_size_is_accepted_and_one_more_is_not() -> None:
    assert parse_size(str(MAX_SIZE), key=KEY) == MAX_SIZE
    with pytest.raises(ConfigError, match="too large"):
        parse_size(str(MAX_SIZE + 1), key=KEY)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1 KiB"), (1536, "1.5 KiB"),
     (3 * GiB // 2, "1.5 GiB"), (8 * GiB, "8 GiB"), (GiB - 1, "1 GiB"), (5 * TiB // 4, "1.25 TiB"),
     (-2 * MiB, "-2 MiB")],
)
def test_format_examples(n: int, text: str) -> None:
    assert format_size(n) == text


@given(st.integers(min_value=0, max_value=MAX_SIZE))
def test_decimal_integers_parse_to_themselves(n: int) -> None:
    assert parse_size(f"{n}", key=KEY) == n


@given(st.integers(min_value=0, max_value=1 << 60))
def test_format_then_parse_round_trips_within_rounding(n: int) -> None:
    back = parse_size(format_size(n), key=KEY)
    # two decimals of a unit that n is at least one of: within 0.5%, plus the byte rounded down
    assert abs(back - n) <= n * 0.005 + 1


@given(st.integers(min_value=1, max_value=1023), st.sampled_from(["KiB", "MiB", "GiB", "TiB", "PiB"]))
def test_whole_multiples_of_the_printed_unit_round_trip_exactly(k: int, unit: str) -> None:
    assert format_size(k * UNITS[unit.lower()]) == f"{k} {unit}"
    n = k * UNITS[unit.lower()]
    assert parse_size(format_size(n), key=KEY) == n


@given(
    st.integers(min_value=0, max_value=8000),  # 8000 PiB is still below the 8 EiB limit
    st.sampled_from(sorted(u for u in UNITS if u)),
    st.text(alphabet=" \t", max_size=2),
    st.data(),
)
def test_units_in_any_case_with_optional_space(k: int, unit: str, space: str, data: st.DataObject) -> None:
    cased = "".join(c.upper() if data.draw(st.booleans()) else c for c in unit)
    assert parse_size(f"{k}{space}{cased}", key=KEY) == k * UNITS[unit]


@given(st.text(max_size=80), st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=20))
def test_any_text_either_parses_or_raises_config_error_naming_the_key(text: str, key: str) -> None:
    try:
        n = parse_size(text, key=key)
    except ConfigError as exc:
        assert str(exc).startswith(f"{key}=")
    else:
        assert 0 <= n <= MAX_SIZE


@given(st.from_regex(r"\A(-[0-9]+|[0-9]*[a-zA-Z!@#$%^&*()]+[0-9]+|[0-9]+ ?[ACD-FH-JL-OQ-SU-Zacd-fh-jl-oq-su-z]+)\Z"))
def test_generated_bad_strings_raise(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(text, key="TIERD_DRAM")
    assert "TIERD_DRAM" in str(info.value)
