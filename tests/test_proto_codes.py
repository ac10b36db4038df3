from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hm_proto import (
    LocalProtocolError,
    format_user_code,
    looks_like_token,
    normalize_user_code,
)
from hm_proto.server import (
    USER_CODE_ALPHABET,
    generate_device_code,
    generate_token,
    generate_user_code,
    hash_token,
    token_matches,
)


def seeded(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def test_alphabet_is_ambiguity_safe() -> None:
    for ch in "0O1Il":
        assert ch not in USER_CODE_ALPHABET
    assert len(set(USER_CODE_ALPHABET)) == len(USER_CODE_ALPHABET) == 31


@given(st.integers(min_value=0, max_value=2**32))
def test_user_code_round_trips_through_display_and_parse(seed: int) -> None:
    code = generate_user_code(seeded(seed))
    shown = format_user_code(code)
    assert len(shown) == 9 and shown[4] == "-"
    assert normalize_user_code(shown) == code
    assert normalize_user_code(shown.lower()) == code
    assert normalize_user_code(shown.replace("-", "")) == code
    assert normalize_user_code(f"  {shown.lower()} ") == code


def test_normalize_rejects_non_codes() -> None:
    for bad in ["", "WXJ4-9KL", "WXJ4-9KLMN", "WXJ0-9KLM", "WXJ4_9KLM", "WXJ4-9KLO"]:
        assert normalize_user_code(bad) is None
    with pytest.raises(LocalProtocolError):
        format_user_code("nope")


def test_user_codes_are_uniform_enough() -> None:
    src = seeded(7)
    counts = dict.fromkeys(USER_CODE_ALPHABET, 0)
    for _ in range(2000):
        for ch in generate_user_code(src):
            counts[ch] += 1
    expected = 2000 * 8 / 31
    assert all(abs(c - expected) < expected * 0.25 for c in counts.values())


def test_device_code_is_long_and_url_safe() -> None:
    code = generate_device_code(seeded(1))
    assert len(code) == 43
    assert all(c.isalnum() or c in "-_" for c in code)


@given(st.integers(min_value=0, max_value=2**32))
def test_token_shape_and_checksum(seed: int) -> None:
    tok = generate_token(seeded(seed))
    assert tok.startswith("hm_sync_") and len(tok) == 8 + 30 + 6
    assert looks_like_token(tok)
    assert token_matches(tok, hash_token(tok))
    assert not token_matches(tok + "x", hash_token(tok))


@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=8, max_value=43), st.data())
def test_one_changed_character_fails_the_checksum(seed: int, pos: int, data: st.DataObject) -> None:
    tok = generate_token(seeded(seed))
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    new = data.draw(st.sampled_from([c for c in alphabet if c != tok[pos]]))
    assert not looks_like_token(tok[:pos] + new + tok[pos + 1 :])


def test_hash_is_sha256_hex() -> None:
    assert hash_token("hm_sync_x") == __import__("hashlib").sha256(b"hm_sync_x").hexdigest()
