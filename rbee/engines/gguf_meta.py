"""What a GGUF's metadata says, translated for mlx-lm: model config, weight names, tokenizer.

`mlx.core.load` reads a GGUF's tensors (Q4_0, Q4_1 and Q8_0 arrive as MLX affine quantization,
group size 32) and its key/value metadata, but nothing more: the model config, the names mlx-lm's
modules expect, and the tokenizer all have to be rebuilt from that metadata. This module does it
with pure functions over plain Python values (the caller turns MLX arrays into lists and numbers
first), so it is tested without MLX installed.

The tokenizer comes out as a `tokenizer.json` document for the `tokenizers` library, built to cut
text the way llama.cpp does for the same file: the same pre-tokenizer regex for the GGUF's
`tokenizer.ggml.pre`, control tokens matched only in templated prompts, user-defined tokens always.
Only the families checked against llama.cpp are accepted; anything else is refused with the reason,
so a model never runs with a tokenizer that silently cuts text differently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rbee.errors import EngineError

__all__ = [
    "chat_template",
    "eog_token_ids",
    "llama_config",
    "special_token_text",
    "tokenizer_json",
    "weight_name",
]

Metadata = Mapping[str, Any]

# GGUF tensor names (llama.cpp's LLM_TENSOR_NAMES for the llama architecture) -> mlx-lm's.
_BLOCK_PARTS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_LEVEL = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}

# llama_token_type in GGUF's tokenizer.ggml.token_type.
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4

# Pre-tokenizers of the `tokenizers` library that cut text exactly as llama.cpp's regexes for
# these `tokenizer.ggml.pre` values (llama-vocab.cpp): the GPT-2 regex, and for the StarCoder
# family (SmolLM included) every digit split off first.
_BYTE_LEVEL = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": True,
    "use_regex": True,
}
# (llama.cpp's "default", used when a file names none, is a different regex: not accepted.)
_PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _BYTE_LEVEL,
    "gpt2": _BYTE_LEVEL,
    **{
        pre: {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL],
        }
        for pre in ("smollm", "starcoder", "refact")
    },
}

# Token texts llama.cpp treats as end of generation when they are control tokens.
_EOG_TEXTS = frozenset(
    {
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|eom_id|>",
        "<|end|>",
        "<end_of_turn>",
        "<|end_of_text|>",
        "<EOT>",
        "<end_of_utterance>",
    }
)


def _require(meta: Metadata, key: str, where: str) -> Any:
    if key not in meta:
        raise EngineError(f"{where}: the GGUF metadata has no {key!r}")
    return meta[key]


def llama_config(meta: Metadata, tensor_names: Sequence[str], where: str) -> dict[str, Any]:
    """The mlx-lm `config.json` of a llama-architecture GGUF (`where` names it in errors).

    GGUF stores the query and key projections permuted for llama.cpp's RoPE, which rotates
    adjacent pairs; `rope_traditional` makes MLX rotate the same pairs, so the weights are used
    as they are.
    """
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise EngineError(
            f"{where}: the MLX engine reads llama-architecture GGUF files, this one is {arch!r}; "
            "use an mlx-lm folder of this model or the llama.cpp engine (--engine llamacpp)"
        )
    if "rope_freqs.weight" in tensor_names:
        raise EngineError(
            f"{where}: this GGUF scales RoPE with a rope_freqs tensor (Llama 3.1 style), which "
            "the MLX engine does not read; use an mlx-lm folder or --engine llamacpp"
        )
    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise EngineError(
            f"{where}: RoPE scaling {scaling!r} is not supported by the MLX engine for GGUF files; "
            "use an mlx-lm folder or --engine llamacpp"
        )

    def key(name: str) -> Any:
        return _require(meta, f"llama.{name}", where)

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    vocab = meta.get("llama.vocab_size") or len(_require(meta, "tokenizer.ggml.tokens", where))
    config: dict[str, Any] = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(key("block_count")),
        "intermediate_size": int(key("feed_forward_length")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(meta.get("llama.attention.head_count_kv", heads)),
        "head_dim": int(meta.get("llama.attention.key_length", hidden // heads)),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "vocab_size": int(vocab),
        "rope_theta": float(meta.get("llama.rope.freq_base", 10000.0)),
        "rope_traditional": True,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "max_position_embeddings": int(meta.get("llama.context_length", 4096)),
    }
    if scaling == "linear":
        factor = float(_require(meta, "llama.rope.scaling.factor", where))
        config["rope_scaling"] = {"type": "linear", "factor": factor}
    return config


def weight_name(gguf_name: str) -> str | None:
    """mlx-lm's name for a GGUF tensor (`blk.3.attn_q.scales` -> `model.layers.3...`), or None."""
    stem, _, kind = gguf_name.rpartition(".")
    if kind not in ("weight", "scales", "biases", "bias"):
        return None
    parts = stem.split(".")
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _BLOCK_PARTS:
        return f"model.layers.{parts[1]}.{_BLOCK_PARTS[parts[2]]}.{kind}"
    if len(parts) == 1 and parts[0] in _TOP_LEVEL:
        return f"{_TOP_LEVEL[parts[0]]}.{kind}"
    return None


def _merge_pair(merge: str) -> list[str]:
    # llama.cpp splits at the first space after the first character (a merge may start with one).
    cut = merge.find(" ", 1)
    if cut < 0:
        raise EngineError(f"the GGUF tokenizer has a malformed merge {merge!r}")
    return [merge[:cut], merge[cut + 1 :]]


def tokenizer_json(meta: Metadata, where: str) -> dict[str, Any]:
    """A `tokenizer.json` document equivalent to the GGUF's GPT-2-style BPE tokenizer.

    Control (and unknown) tokens become special added tokens, matched only when special tokens
    are parsed; user-defined tokens are always matched, as in llama.cpp. A post-processor adds
    the BOS token when the GGUF says to (`tokenizer.ggml.add_bos_token`).
    """
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise EngineError(
            f"{where}: the MLX engine builds GPT-2-style BPE tokenizers from GGUF metadata, "
            f"this file's is {model!r}; use an mlx-lm folder of this model or --engine llamacpp"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in _PRE_TOKENIZERS:
        raise EngineError(
            f"{where}: the GGUF pre-tokenizer {pre!r} is not one the MLX engine reproduces "
            f"({', '.join(sorted(_PRE_TOKENIZERS))}); use an mlx-lm folder or --engine llamacpp"
        )
    tokens: list[str] = list(_require(meta, "tokenizer.ggml.tokens", where))
    types: list[int] = list(meta.get("tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [_merge_pair(m) for m in _require(meta, "tokenizer.ggml.merges", where)]
    added = [
        {
            "id": i,
            "content": text,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": kind != _USER_DEFINED,
        }
        for i, (text, kind) in enumerate(zip(tokens, types, strict=True))
        if kind in (_UNKNOWN, _CONTROL, _USER_DEFINED)
    ]
    post_processor: dict[str, Any] | None = None
    bos = meta.get("tokenizer.ggml.bos_token_id")
    # For the pre-tokenizers accepted here llama.cpp adds BOS only when the file asks for it.
    if bos is not None and meta.get("tokenizer.ggml.add_bos_token", False):
        bos_text = tokens[int(bos)]
        post_processor = {
            "type": "TemplateProcessing",
            "single": [
                {"SpecialToken": {"id": bos_text, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
            ],
            "pair": [
                {"SpecialToken": {"id": bos_text, "type_id": 0}},
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {bos_text: {"id": bos_text, "ids": [int(bos)], "tokens": [bos_text]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": _PRE_TOKENIZERS[pre],
        "post_processor": post_processor,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {text: i for i, text in enumerate(tokens)},
            "merges": merges,
        },
    }


def eog_token_ids(meta: Metadata) -> list[int]:
    """Tokens that end a generation: EOS, EOT, EOM, and control tokens llama.cpp ends on."""
    ids = {
        int(meta[key])
        for key in (
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eom_token_id",
        )
        if meta.get(key) is not None
    }
    tokens = meta.get("tokenizer.ggml.tokens") or []
    types = meta.get("tokenizer.ggml.token_type") or []
    ids.update(
        i
        for i, (text, kind) in enumerate(zip(tokens, types, strict=False))
        if kind == _CONTROL and text in _EOG_TEXTS
    )
    return sorted(ids)


def special_token_text(meta: Metadata, which: str) -> str:
    """The text of the `which` ("bos", "eos") token, or "" when the GGUF names none."""
    token_id = meta.get(f"tokenizer.ggml.{which}_token_id")
    tokens = meta.get("tokenizer.ggml.tokens") or []
    if token_id is None or not 0 <= int(token_id) < len(tokens):
        return ""
    return str(tokens[int(token_id)])


def chat_template(meta: Metadata) -> str | None:
    """The GGUF's Jinja chat template, if it has one."""
    template = meta.get("tokenizer.chat_template")
    return template if isinstance(template, str) and template else None
