"""Traits in the customer hash: the trait-change codec, the field layout, the lookup document."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from segments.changes import CodecError
from segments.rules.ruleset import _SEGMENT_NAME
from streams.serving.cache import (
    TRAIT_FIELD_PREFIX,
    TraitWrite,
    customer_traits,
    member_segments,
)
from streams.serving.lookup import lookup_document

pytestmark = pytest.mark.unit


def trait_change(**overrides):
    change = {
        "change_id": "c-42:trait:lifecycle:3",
        "customer_id": "c-42",
        "trait": "lifecycle",
        "value": "loyal",
        "at": "2026-11-20T14:03:11.120Z",
        "cause": "purchase",
        "event_id": "pos-1",
        "rules_version": 1,
        "seq": 3,
        "metrics": {},
    }
    change.update(overrides)
    return orjson.dumps(change)


def test_a_trait_change_decodes_to_the_write_the_cache_needs():
    write = TraitWrite.from_json(trait_change())
    assert write == TraitWrite("c-42", "lifecycle", 3, "loyal")
    assert write.field == "trait:lifecycle"
    assert TraitWrite.from_json(trait_change(value=None)).value is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (trait_change(customer_id=None), "missing field 'customer_id'"),
        (trait_change(trait=""), "trait must be text"),
        (trait_change(seq=0), "seq must be a positive integer"),
        (trait_change(seq=True), "seq must be a positive integer"),
        (trait_change(seq="3"), "seq must be a positive integer"),
        (trait_change(value=3), "value must be a JSON string or null"),
        (orjson.dumps({"customer_id": "c", "trait": "t", "seq": 1}), "missing field 'value'"),
    ],
)
def test_what_is_not_a_trait_change_is_refused_with_the_reason(raw, message):
    with pytest.raises(CodecError, match=message):
        TraitWrite.from_json(raw)


@given(st.text(min_size=1, max_size=40))
def test_a_trait_field_can_never_be_a_segment_name(trait):
    # Segment names are [a-z][a-z0-9_]*; the prefix's colon is outside that class.
    assert _SEGMENT_NAME.fullmatch(TRAIT_FIELD_PREFIX + trait) is None


FIELDS = {
    "vip": "3|1|2026-11-20T14:03:11.120Z",
    "win_back": "2|0|2026-10-01T00:00:00Z",
    "trait:lifecycle": '4|"loyal"',
    "trait:top_category": '2|"shoes|bags"',  # a "|" in a value is the value's
    "trait:price_band": "3|null",  # set, then cleared: no value now
}


def test_segments_leave_trait_fields_out_and_traits_leave_null_values_out():
    assert member_segments(FIELDS) == [("vip", "2026-11-20T14:03:11.120Z")]
    assert customer_traits(FIELDS) == {"lifecycle": "loyal", "top_category": "shoes|bags"}


def test_the_lookup_document_has_traits_between_segments_and_as_of():
    document = lookup_document("c-1", FIELDS)
    assert list(document) == ["customer_id", "segments", "traits", "as_of"]
    assert document["traits"] == {"lifecycle": "loyal", "top_category": "shoes|bags"}
    assert lookup_document("nobody", {})["traits"] == {}
    only_traits = lookup_document("c-2", {"trait:lifecycle": '1|"new"'})
    assert only_traits["segments"] == [] and only_traits["traits"] == {"lifecycle": "new"}
