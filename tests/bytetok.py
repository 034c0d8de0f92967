"""A tiny real `tokenizer.json` for grammar tests: one token per byte, a few special tokens.

Byte b is token `FIRST_BYTE + b` (GPT-2's byte-level alphabet, no merges), so any text tokenizes
as its bytes and a test can script an answer token by token without a model.
"""

from __future__ import annotations

import json

__all__ = ["FIRST_BYTE", "SPECIALS", "byte_tokens", "tokenizer_json"]

SPECIALS = {"<unk>": 0, "<s>": 1, "</s>": 2, "<|im_start|>": 6, "<|im_end|>": 7}
FIRST_BYTE = 16
"""The id of byte 0; ids below it are special (or unused)."""


def _byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, shifted = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + shifted)
            shifted += 1
    return [chars[b] for b in range(256)]


def byte_tokens(text: str) -> list[int]:
    """The token ids of `text`: one per UTF-8 byte."""
    return [FIRST_BYTE + b for b in text.encode()]


def tokenizer_json() -> str:
    """The tokenizer.json document (byte-level BPE without merges)."""
    vocab = {c: FIRST_BYTE + b for b, c in enumerate(_byte_alphabet())}
    added = [
        {"id": i, "content": text, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for text, i in SPECIALS.items()
    ]  # fmt: skip
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}  # fmt: skip
    return json.dumps({
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": []},
    })  # fmt: skip
