"""The token codec: compact, URL-safe, unforgeable, kind-bound, with key rotation."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from campaigns.feedback.tokens import CLICK, OPEN, UNSUBSCRIBE, VIEW, InvalidToken, TokenCodec, TokenPayload

KEYS = ["current-signing-key", "previous-key"]


@pytest.fixture
def codec() -> TokenCodec:
    return TokenCodec(KEYS)


def test_each_kind_round_trips(codec):
    assert codec.decode(OPEN, codec.open_token(12, 34)) == TokenPayload(OPEN, 12, 34)
    assert codec.decode(CLICK, codec.click_token(12, 34, 5)) == TokenPayload(CLICK, 12, 34, 5)
    assert codec.decode(UNSUBSCRIBE, codec.unsubscribe_token(12, 34)) == TokenPayload(UNSUBSCRIBE, 12, 34)
    assert codec.decode(VIEW, codec.view_token(12, 34)) == TokenPayload(VIEW, 12, 34)


@pytest.mark.parametrize("ids", [(0, 0, 0), (1, 2**31, 127), (2**63 - 1, 2**63 - 1, 2**31 - 1), (128, 16384, 128)])
def test_id_extremes_round_trip(codec, ids):
    campaign_id, recipient_id, link_id = ids
    payload = codec.decode(CLICK, codec.click_token(campaign_id, recipient_id, link_id))
    assert (payload.campaign_id, payload.recipient_id, payload.link_id) == ids


def test_tokens_are_url_safe_and_compact(codec):
    token = codec.click_token(4321, 9_876_543, 7)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(token) <= 32


def test_message_tokens_match_the_single_token_methods(codec):
    opened, unsubscribe, clicks = codec.message_tokens(3, 99, 4)
    assert opened == codec.open_token(3, 99)
    assert unsubscribe == codec.unsubscribe_token(3, 99)
    assert clicks == [codec.click_token(3, 99, link_id) for link_id in range(4)]


def test_tag_is_standard_hmac_sha256_over_the_kind_and_payload(codec):
    token = codec.unsubscribe_token(1, 2)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body, tag = raw[:-16], raw[-16:]
    expected = hmac.new(KEYS[0].encode(), b"campaigns/token/v1/unsubscribe\0" + body, hashlib.sha256).digest()[:16]
    assert tag == expected


def test_tampered_token_is_rejected(codec):
    token = codec.click_token(12, 34, 5)
    for position in range(len(token)):
        replacement = "A" if token[position] != "A" else "B"
        tampered = token[:position] + replacement + token[position + 1:]
        with pytest.raises(InvalidToken):
            codec.decode(CLICK, tampered)


def test_truncated_token_is_rejected(codec):
    token = codec.open_token(12, 34)
    for length in range(len(token)):
        with pytest.raises(InvalidToken):
            codec.decode(OPEN, token[:length])


def test_token_of_another_kind_is_rejected(codec):
    with pytest.raises(InvalidToken):
        codec.decode(UNSUBSCRIBE, codec.open_token(12, 34))
    with pytest.raises(InvalidToken):
        codec.decode(OPEN, codec.unsubscribe_token(12, 34))
    with pytest.raises(InvalidToken):
        codec.decode(OPEN, codec.click_token(12, 34, 0))


def test_header_byte_swapped_to_another_kind_is_rejected(codec):
    # same ids, header byte rewritten to "unsubscribe": the kind is inside the MAC, so the tag no longer matches
    token = codec.open_token(12, 34)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[0] = 0x13
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(InvalidToken):
        codec.decode(UNSUBSCRIBE, forged)


def test_click_token_for_other_link_differs(codec):
    tokens = {codec.click_token(12, 34, link_id) for link_id in range(50)}
    assert len(tokens) == 50
    assert codec.click_token(12, 34, 1) != codec.click_token(12, 35, 1)
    assert codec.click_token(12, 34, 1) != codec.click_token(13, 34, 1)


def test_rotated_key_still_verifies():
    old = TokenCodec(["previous-key"])
    rotated = TokenCodec(["current-signing-key", "previous-key"])
    token = old.unsubscribe_token(7, 8)
    assert rotated.decode(UNSUBSCRIBE, token) == TokenPayload(UNSUBSCRIBE, 7, 8)
    # and the first key is the one that signs
    assert rotated.unsubscribe_token(7, 8) == TokenCodec(["current-signing-key"]).unsubscribe_token(7, 8)


def test_key_removed_from_rotation_no_longer_verifies():
    token = TokenCodec(["retired-key"]).open_token(1, 2)
    with pytest.raises(InvalidToken):
        TokenCodec(["current-signing-key"]).decode(OPEN, token)


def test_non_canonical_base64_spelling_is_rejected(codec):
    token = codec.open_token(1, 2)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    unused_bits = {2: 4, 3: 2}[len(token) % 4]  # a 1- or 2-byte tail leaves 4 or 2 low bits unused
    variant = token[:-1] + alphabet[last | ((1 << unused_bits) - 1)]
    assert variant != token
    with pytest.raises(InvalidToken):
        codec.decode(OPEN, variant)


@pytest.mark.parametrize("garbage", [
    "", "A", "=" * 40, "' OR 1=1; --", "'; DROP TABLE campaign_recipients; --", "ÄÖÜ" * 10, "😀" * 30,
    "A" * 30 + "\x00", "A" * 10_000_000, "../../etc/passwd", "%00%0d%0a" * 5, " " * 30, "AAAA" * 8 + "\n",
    None, 12345, b"bytes-token-bytes-token-bytes-token", ["list"],
])
def test_garbage_only_ever_raises_invalid_token(codec, garbage):
    for kind in (OPEN, CLICK, UNSUBSCRIBE, VIEW):
        with pytest.raises(InvalidToken):
            codec.decode(kind, garbage)


@pytest.mark.parametrize("kind", ["bounce", "", None, ["open"], b"open"])
def test_unknown_kind_raises_invalid_token(codec, kind):
    with pytest.raises(InvalidToken):
        codec.decode(kind, codec.open_token(1, 2))


def test_padding_or_whitespace_around_a_valid_token_is_rejected(codec):
    token = codec.open_token(1, 2)
    for variant in (token + "=", token + "==", " " + token, token + "\n", token.replace("-", "+")):
        if variant == token:
            continue
        with pytest.raises(InvalidToken):
            codec.decode(OPEN, variant)


def test_empty_key_list_is_rejected_with_a_clear_message():
    with pytest.raises(ValueError, match="at least one secret key"):
        TokenCodec([])


def test_empty_key_string_is_rejected():
    with pytest.raises(ValueError, match="non-empty"):
        TokenCodec(["good", ""])


def test_single_string_instead_of_a_list_is_rejected():
    with pytest.raises(TypeError):
        TokenCodec("just-one-key")


@pytest.mark.parametrize("bad", [-1, 2**63, True, 1.5, "7"])
def test_out_of_range_ids_are_refused_when_signing(codec, bad):
    with pytest.raises(ValueError, match="between 0 and"):
        codec.open_token(bad, 1)


def test_repr_does_not_show_keys(codec):
    assert "current-signing-key" not in repr(codec)


def test_view_token_header_is_version_1_kind_4_and_its_tag_is_hmac_over_the_view_domain(codec):
    token = codec.view_token(1, 2)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    body, tag = raw[:-16], raw[-16:]
    assert body[0] == 0x14
    assert tag == hmac.new(KEYS[0].encode(), b"campaigns/token/v1/view\0" + body, hashlib.sha256).digest()[:16]


def test_view_tokens_and_the_other_kinds_are_never_accepted_for_each_other(codec):
    view = codec.view_token(12, 34)
    others = {OPEN: codec.open_token(12, 34), CLICK: codec.click_token(12, 34, 0),
              UNSUBSCRIBE: codec.unsubscribe_token(12, 34)}
    for kind, token in others.items():
        with pytest.raises(InvalidToken):
            codec.decode(VIEW, token)
        with pytest.raises(InvalidToken):
            codec.decode(kind, view)


@pytest.mark.parametrize("kind", [OPEN, UNSUBSCRIBE])
def test_a_token_whose_header_byte_is_rewritten_to_view_is_rejected(codec, kind):
    # same two ids: only the kind's MAC domain tells them apart, and it does
    token = codec.open_token(12, 34) if kind == OPEN else codec.unsubscribe_token(12, 34)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[0] = 0x14
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(InvalidToken, match="signature"):
        codec.decode(VIEW, forged)


def test_tampered_view_token_is_rejected(codec):
    token = codec.view_token(12, 34)
    for position in range(len(token)):
        replacement = "A" if token[position] != "A" else "B"
        with pytest.raises(InvalidToken):
            codec.decode(VIEW, token[:position] + replacement + token[position + 1:])


def test_view_token_signed_with_a_rotated_key_verifies_and_an_unknown_key_does_not():
    token = TokenCodec(["previous-key"]).view_token(7, 8)
    assert TokenCodec(KEYS).decode(VIEW, token) == TokenPayload(VIEW, 7, 8)
    with pytest.raises(InvalidToken):
        TokenCodec(["current-signing-key"]).decode(VIEW, token)
