"""One short hash tag per Redis Cluster slot, for the per-slot cache sentinels.

On a Cluster the cache keeps one sentinel per hash slot, `<P>meta:cache:{<tag>}`, where
the tag's slot is that slot: it lives on the node of the customers of its slot, so a node
that loses its data loses their sentinel too (docs/serving.md "Redis Cluster and TLS").
"""

from __future__ import annotations

import binascii
import functools
import itertools

SLOTS = 16384
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def tag_slot(tag: str) -> int:
    """The slot of a key whose hash tag is `tag`: CRC16 (XMODEM) of the tag, mod 16384."""
    return binascii.crc_hqx(tag.encode(), 0) % SLOTS


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """tags[s] is the first string (shortest, then in order over [0-9a-z]) whose slot is s.

    Deterministic and computed once per process: about 0.03 s (all 1-4 character strings
    are tried until every slot has one; 4 characters suffice).
    """
    tags: list[str | None] = [None] * SLOTS
    missing = SLOTS
    for length in itertools.count(1):
        for letters in itertools.product(_ALPHABET, repeat=length):
            tag = "".join(letters)
            slot = tag_slot(tag)
            if tags[slot] is None:
                tags[slot] = tag
                missing -= 1
                if not missing:
                    return tuple(t for t in tags if t is not None)
    raise AssertionError("unreachable")  # pragma: no cover
