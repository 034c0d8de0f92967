"""MLX through mlx-lm: mlx-lm model folders, and llama GGUF files read by `mlx.core.load`.

On Apple Silicon MLX runs on the GPU (Metal); on Linux `mlx[cpu]` runs the same code on the CPU,
which is how the tests exercise this engine on the default model. A GGUF's tensors arrive from
`mlx.core.load` already in MLX's quantized form (Q4_1 as 4 bits, group size 32); gguf_meta turns
its metadata into an mlx-lm llama config and a `tokenizer.json`, so after loading both kinds of
artifact look the same: an mlx-lm model plus one `tokenizers` tokenizer. `save_folder` writes a
loaded model back out as an mlx-lm folder.

Text comes out as in the llama.cpp engine: each token's bytes through an incremental UTF-8
decoder (no re-detokenizing the answer per token), exact token counts, the cancel flag checked
between tokens, stop strings cut by StopMatcher. Sampling follows llama.cpp's chain (top-k 40,
top-p, min-p 0.05, then temperature) so a request samples from the same distribution on either
engine; the random key is the request's own (seeded requests are reproducible), and presence and
frequency penalties are OpenAI's: over the tokens generated so far. A request's `logit_bias` is
added to the logits before the penalties and the sampler, as on llama.cpp. A `response_format` is
enforced by a last logits processor (llguidance, rbee.engines.grammar): the tokens its grammar
does not allow next get -inf. It must know the token sampled last before the next step is built,
so a constrained answer gives up mlx-lm's overlap of one step's sampling with the next's compute.

Logprobs, when asked for, are taken from the logits as the model gave them (a first logits
processor keeps them), so they mean what they mean on llama.cpp: the model's distribution before
logit_bias, penalties and sampling.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rbee.api.logprobs import Logprob
from rbee.api.openai import ChatRequest, CompletionRequest, SamplingParams
from rbee.engines import gguf_meta
from rbee.engines.base import (
    Finish,
    FinishReason,
    Piece,
    Prepared,
    check_logit_bias,
    fit_context,
)
from rbee.engines.chat_template import ChatTemplate, folder_template_source
from rbee.engines.detokenize import TokenText, logprob_of
from rbee.engines.fit import artifact_bytes, check_fits, estimate_need, mem_available
from rbee.engines.grammar import Constraint, Vocabulary, grammar_for, tokenizer_from_json
from rbee.engines.tool_prompt import template_inputs
from rbee.errors import ApiError, EngineError

__all__ = ["MlxEngine", "token_pieces"]

log = logging.getLogger(__name__)

# The samplers OpenAI's API does not expose, as the llama.cpp engine sets them.
_TOP_K = 40
_MIN_P = 0.05


@dataclass(frozen=True)
class _Vocab:
    """Everything about text a loaded model needs: cutting prompts, rendering answers."""

    tokenizer: Any  # tokenizers.Tokenizer; special tokens parsed (templated chat prompts)
    plain: Any  # the same tokenizer reading special tokens as text (raw completion prompts)
    pieces: tuple[bytes, ...]  # each token id's bytes, as llama.cpp renders it
    special: dict[int, bytes]  # the text of each special token (they render as nothing above)
    eog: frozenset[int]
    template: ChatTemplate | None
    bos_text: str
    eos_text: str


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the printable character standing for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table.values():
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _decoder_kind(decoder: dict[str, Any] | None) -> str:
    if decoder is None:
        return "none"
    if decoder.get("type") == "ByteLevel":
        return "byte-level"
    if decoder.get("type") == "Sequence":
        steps = decoder.get("decoders") or []
        if any(d.get("type") == "ByteLevel" for d in steps):
            return "byte-level"
        if any(
            d.get("type") == "Replace" and d.get("pattern", {}).get("String") == "\u2581"
            for d in steps
        ):
            return "sentencepiece"
    if decoder.get("type") == "Metaspace":
        return "sentencepiece"
    return str(decoder.get("type"))


def token_pieces(document: dict[str, Any], where: str) -> tuple[bytes, ...]:
    """The bytes each token id stands for in a `tokenizer.json` document.

    Special tokens render as nothing and other added tokens as their text, as llama.cpp renders
    tokens without `special`. Byte-level vocabularies (GPT-2 style) map each character back to its
    byte; SentencePiece ones turn "▁" into a space and `<0xNN>` into byte NN.
    """
    kind = _decoder_kind(document.get("decoder"))
    vocab: dict[str, int] = document["model"]["vocab"]
    added = {t["id"]: t for t in document.get("added_tokens") or []}
    size = max([*vocab.values(), *added, -1]) + 1
    texts = [""] * size
    for text, i in vocab.items():
        texts[i] = text
    pieces = []
    if kind == "byte-level":
        table = _byte_decoder()

        def piece(text: str) -> bytes:
            return b"".join(bytes([table[c]]) if c in table else c.encode() for c in text)

    elif kind == "sentencepiece":

        def piece(text: str) -> bytes:
            if len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                try:
                    return bytes([int(text[3:5], 16)])
                except ValueError:
                    pass
            return text.replace("\u2581", " ").encode()

    else:
        raise EngineError(
            f"{where}: the tokenizer's decoder ({kind}) is neither byte-level BPE nor "
            "SentencePiece, which the MLX engine cannot render token by token; use --engine "
            "llamacpp with a GGUF of this model"
        )
    for i, text in enumerate(texts):
        token = added.get(i)
        if token is None:
            pieces.append(piece(text))
        elif token.get("special"):
            pieces.append(b"")
        else:
            pieces.append(str(token["content"]).encode())
    return tuple(pieces)


def _make_vocab(
    document: dict[str, Any],
    *,
    eog: list[int],
    template: str | None,
    bos_text: str,
    eos_text: str,
    where: str,
) -> _Vocab:
    from tokenizers import Tokenizer  # noqa: PLC0415 - engines import their libraries lazily

    text = json.dumps(document)
    tokenizer = Tokenizer.from_str(text)
    plain = Tokenizer.from_str(text)
    plain.encode_special_tokens = True
    return _Vocab(
        tokenizer=tokenizer,
        plain=plain,
        pieces=token_pieces(document, where),
        special={
            int(t["id"]): str(t["content"]).encode()
            for t in document.get("added_tokens") or []
            if t.get("special")
        },
        eog=frozenset(eog),
        template=(
            ChatTemplate(template, bos_token=bos_text, eos_token=eos_text, where=where)
            if template
            else None
        ),
        bos_text=bos_text,
        eos_text=eos_text,
    )


def _token_text(value: Any) -> str:
    # tokenizer_config.json gives special tokens as a string or as {"content": ...}.
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value) if value else ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise EngineError(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise EngineError(f"{path}: expected a JSON object")
    return data


def _folder_vocab(folder: Path, config: dict[str, Any]) -> tuple[_Vocab, dict[str, Any]]:
    """The tokenizer, template and end-of-generation tokens of an mlx-lm (Hugging Face) folder."""
    document = _read_json(folder / "tokenizer.json")
    tok_config = (
        _read_json(folder / "tokenizer_config.json")
        if (folder / "tokenizer_config.json").exists()
        else {}
    )
    template = folder_template_source(folder, tok_config)
    bos_text = _token_text(tok_config.get("bos_token"))
    eos_text = _token_text(tok_config.get("eos_token"))
    ids = {t["content"]: t["id"] for t in document.get("added_tokens") or []}
    ids.update(document["model"]["vocab"])
    eog = config.get("eos_token_id")
    eog_ids = set(eog if isinstance(eog, list) else [] if eog is None else [eog])
    if eos_text in ids:
        eog_ids.add(ids[eos_text])
    vocab = _make_vocab(
        document,
        eog=sorted(int(i) for i in eog_ids),
        template=template,
        bos_text=bos_text,
        eos_text=eos_text,
        where=str(folder),
    )
    return vocab, document


def _sampler(sampling: SamplingParams, vocab_size: int) -> Callable[[Any], Any]:
    """Pick a token from log-probabilities: argmax at temperature 0, else llama.cpp's chain."""
    import mlx.core as mx  # noqa: PLC0415
    from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p  # noqa: PLC0415

    if sampling.temperature <= 0:
        return lambda logprobs: mx.argmax(logprobs, axis=-1)
    seed = random.getrandbits(64) if sampling.seed is None else sampling.seed
    state = [mx.random.key(seed & 0xFFFF_FFFF_FFFF_FFFF)]
    top_k = min(_TOP_K, vocab_size - 1)
    scale = 1.0 / sampling.temperature

    def sample(logprobs: Any) -> Any:
        logprobs = apply_top_k(logprobs, top_k)
        if sampling.top_p < 1.0:
            logprobs = apply_top_p(logprobs, sampling.top_p)
        logprobs = apply_min_p(logprobs, _MIN_P)
        state[0], key = mx.random.split(state[0])
        return mx.random.categorical(logprobs * scale, key=key)

    return sample


def _logit_bias(sampling: SamplingParams) -> list[Callable[[Any, Any], Any]]:
    """A logits processor adding the request's logit_bias (none without one)."""
    import mlx.core as mx  # noqa: PLC0415

    if not sampling.logit_bias:
        return []
    ids = mx.array([t for t, _ in sampling.logit_bias])
    biases = mx.array([b for _, b in sampling.logit_bias])

    def add_bias(tokens: Any, logits: Any) -> Any:
        return logits.at[..., ids].add(biases.astype(logits.dtype))

    return [add_bias]


def _grammar_mask(constraint: Constraint, prompt_len: int) -> Callable[[Any, Any], Any]:
    """A logits processor setting the logits of the tokens `constraint` does not allow next to
    -inf. mlx-lm builds each step before it yields the token sampled last, so the grammar is
    advanced here, over the tokens generated since (one per step); generate() feeds the tokens
    no later step will see, the last one before max_tokens."""
    import mlx.core as mx  # noqa: PLC0415

    def allow(tokens: Any, logits: Any) -> Any:
        new = tokens[prompt_len + constraint.fed :]
        for token in new.tolist() if new.size else ():
            constraint.feed(int(token))
        allowed = mx.array(constraint.allowed(logits.shape[-1]))
        return mx.where(allowed, logits, mx.array(-mx.inf, dtype=logits.dtype))

    return allow


class _RawLogits:
    """A logits processor that changes nothing and keeps each step's logits, for logprobs: put
    first, it sees them as the model gave them. mlx-lm builds the next step before it yields the
    current token, so the rows queue up, one per step, in order."""

    def __init__(self) -> None:
        self.rows: deque[Any] = deque()

    def __call__(self, tokens: Any, logits: Any) -> Any:
        self.rows.append(logits)
        return logits


def _logprob(row: Any, token: int, top: int, vocab: _Vocab) -> Logprob:
    """The Logprob of `token` sampled from one step's raw logits (an MLX array)."""
    import mlx.core as mx  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415 - a dependency of mlx

    pieces, special = vocab.pieces, vocab.special

    def render(t: int) -> bytes:
        return (pieces[t] if t < len(pieces) else b"") or special.get(t, b"")

    return logprob_of(np.array(row.astype(mx.float32)), token, top, render)


def _penalties(sampling: SamplingParams, prompt_len: int) -> list[Callable[[Any, Any], Any]]:
    """OpenAI's presence and frequency penalties over the tokens generated so far."""
    import mlx.core as mx  # noqa: PLC0415

    presence, frequency = sampling.presence_penalty, sampling.frequency_penalty
    if not presence and not frequency:
        return []

    def penalize(tokens: Any, logits: Any) -> Any:
        generated = tokens[prompt_len:]
        if generated.size == 0:
            return logits
        counts = mx.zeros((logits.shape[-1],), dtype=logits.dtype).at[generated].add(1.0)
        return logits - (frequency * counts + presence * (counts > 0))

    return [penalize]


class MlxEngine:
    """One model in MLX: an mlx-lm folder, or a llama GGUF file."""

    name = "mlx"

    def __init__(self, model_path: Path, *, n_ctx: int = 4096, device: str | None = None) -> None:
        self._path = model_path
        self._n_ctx = n_ctx
        self._device = device  # "cpu", "metal:0", or None: Metal when there is one
        self._model: Any = None
        self._vocab: _Vocab | None = None
        self._config: dict[str, Any] = {}
        self._tokenizer_doc: dict[str, Any] = {}
        self._narrow: dict[str, Any] = {}  # half-precision weights computed in float32: dtype
        self._grammar_vocab = Vocabulary(self._lltokenizer)

    @property
    def context_length(self) -> int:
        """Tokens of context requests may use (prompt plus answer)."""
        return self._n_ctx

    def load(self) -> None:
        """Check the model fits, then load it (GGUF or mlx-lm folder) and its tokenizer."""
        try:
            import mlx.core as mx  # noqa: PLC0415 - engines import their library lazily
            import mlx_lm  # noqa: PLC0415, F401
        except ImportError as err:
            raise EngineError(
                f"MLX is not installed ({err}); install rbee[mlx] (on Linux it brings mlx[cpu])"
            ) from err
        if not self._path.exists():
            raise EngineError(f"model {self._path} does not exist")
        metal = mx.metal.is_available()
        if self._device is not None and self._device.startswith("metal") and not metal:
            raise EngineError(f"device {self._device} asked for, but MLX finds no Metal GPU here")
        device = self._device or ("metal:0" if metal else "cpu")
        mx.set_default_device(mx.cpu if device == "cpu" else mx.gpu)
        check_fits(
            self._path.name, estimate_need(artifact_bytes(self._path)), mem_available(), device
        )
        # MLX's CPU kernels are many times slower in float16 than in float32 (and bfloat16 has no
        # fast path there either); on the GPU the half-precision weights stay as they are.
        wide = device == "cpu"
        if self._path.is_dir():
            self._load_folder(wide)
        else:
            self._load_gguf(wide)
        log.info("loaded %s in MLX on %s (n_ctx=%d)", self._path.name, device, self._n_ctx)

    def _load_gguf(self, wide: bool) -> None:
        import mlx.core as mx  # noqa: PLC0415
        from mlx.nn.layers.quantized import quantize  # noqa: PLC0415
        from mlx_lm.models import llama  # noqa: PLC0415

        where = str(self._path)
        try:
            loaded: Any = mx.load(where, return_metadata=True)
        except (ValueError, RuntimeError, OSError) as err:
            raise EngineError(f"MLX could not read {where}: {err}") from err
        tensors: dict[str, Any] = loaded[0]
        meta = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in loaded[1].items()}
        config = gguf_meta.llama_config(meta, list(tensors), where)
        document = gguf_meta.tokenizer_json(meta, where)  # refuses before any weight is touched
        weights: dict[str, Any] = {}
        for gguf_name, value in tensors.items():
            name = gguf_meta.weight_name(gguf_name)
            if name is None:
                raise EngineError(f"{where}: unexpected tensor {gguf_name!r} for a llama model")
            weights[name] = value
        narrow = {n: v.dtype for n, v in weights.items() if wide and v.dtype == mx.float16}
        for name in narrow:
            weights[name] = weights[name].astype(mx.float32)
        model = llama.Model(llama.ModelArgs(**config))
        quantized: dict[str, dict[str, Any]] = {}

        def layer_quantization(path: str, module: Any) -> bool | dict[str, Any]:
            # Bits and group size follow from the packed shapes: a Q4_1 file keeps its token
            # embedding in Q8_0, for one.
            if f"{path}.scales" not in weights:
                return False
            in_dims = module.weight.shape[-1]
            params = {
                "group_size": in_dims // weights[f"{path}.scales"].shape[-1],
                "bits": weights[f"{path}.weight"].shape[-1] * 32 // in_dims,
            }
            quantized[path] = params
            return params

        quantize(model, class_predicate=layer_quantization)
        try:
            model.load_weights(list(weights.items()), strict=True)
        except ValueError as err:
            raise EngineError(f"{where}: the weights do not fit a llama model: {err}") from err
        mx.eval(model.parameters())
        eog = gguf_meta.eog_token_ids(meta)
        self._vocab = _make_vocab(
            document,
            eog=eog,
            template=gguf_meta.chat_template(meta),
            bos_text=gguf_meta.special_token_text(meta, "bos"),
            eos_text=gguf_meta.special_token_text(meta, "eos"),
            where=where,
        )
        self._model, self._tokenizer_doc, self._narrow = model, document, narrow
        self._config = {**config, "eos_token_id": eog}
        if quantized:
            self._config["quantization"] = _quant_config(quantized)

    def _load_folder(self, wide: bool) -> None:
        import mlx.core as mx  # noqa: PLC0415
        from mlx.utils import tree_flatten, tree_unflatten  # noqa: PLC0415
        from mlx_lm.utils import load_model  # noqa: PLC0415

        try:
            model, config = load_model(self._path)
        except (OSError, ValueError, KeyError) as err:
            raise EngineError(f"mlx-lm could not load the folder {self._path}: {err}") from err
        params = dict(tree_flatten(model.parameters()))
        half = (mx.float16, mx.bfloat16)
        narrow = {n: p.dtype for n, p in params.items() if wide and p.dtype in half}
        if narrow:
            model.update(tree_unflatten([(n, params[n].astype(mx.float32)) for n in narrow]))
            mx.eval(model.parameters())
        self._vocab, self._tokenizer_doc = _folder_vocab(self._path, config)
        self._model, self._config, self._narrow = model, config, narrow

    def _lltokenizer(self) -> Any:
        """llguidance's tokenizer for the loaded model (masks as wide as its logits)."""
        model, vocab = self._require()
        n_vocab = int(getattr(getattr(model, "args", None), "vocab_size", 0) or len(vocab.pieces))
        return tokenizer_from_json(
            json.dumps(self._tokenizer_doc),
            n_vocab=max(n_vocab, len(vocab.pieces)),
            eos=sorted(vocab.eog),
        )

    def _require(self) -> tuple[Any, _Vocab]:
        if self._model is None or self._vocab is None:
            raise EngineError("the model is not loaded")
        return self._model, self._vocab

    def prepare(self, request: ChatRequest | CompletionRequest) -> Prepared:
        """Apply the chat template (chat) and tokenize; refuse what overflows the context."""
        _, vocab = self._require()
        if isinstance(request, ChatRequest):
            if vocab.template is None:
                raise ApiError(
                    400, "this model has no chat template; use /v1/completions", param="messages"
                )
            messages, tools = template_inputs(request, vocab.template.source)
            try:
                prompt = vocab.template.render(messages, tools)
            except Exception as err:
                raise ApiError(
                    400, f"the chat template rejected these messages: {err}", param="messages"
                ) from err
            # The template writes every special token itself (BOS included, where it wants one).
            tokens: list[int] = vocab.tokenizer.encode(prompt, add_special_tokens=False).ids
            prompt_param = "messages"
        else:
            tokens = vocab.plain.encode(request.prompt, add_special_tokens=True).ids
            prompt_param = "prompt"
        if not tokens:
            raise ApiError(400, "the prompt is empty", param=prompt_param)
        check_logit_bias(request.sampling, len(vocab.pieces))
        prepared = fit_context(tokens, request, self._n_ctx, param=prompt_param)
        return replace(prepared, grammar=grammar_for(request, self._grammar_vocab))

    def _steps(
        self, prepared: Prepared, cancel: threading.Event, constraint: Constraint | None = None
    ) -> Generator[tuple[int, Any], None, None]:
        """Sampled token ids, each with the raw logits it was sampled from when the request
        asked for logprobs (else None), up to an end-of-generation token (excluded), max_tokens
        or cancel; with a `constraint`, only tokens its grammar allows."""
        import mlx.core as mx  # noqa: PLC0415
        from mlx_lm.generate import generate_step  # noqa: PLC0415

        model, vocab = self._require()
        raw = _RawLogits() if prepared.sampling.logprobs is not None else None
        mask = [_grammar_mask(constraint, len(prepared.tokens))] if constraint is not None else []
        steps = generate_step(
            mx.array(prepared.tokens),
            model,
            max_tokens=prepared.max_tokens,
            sampler=_sampler(prepared.sampling, len(vocab.pieces)),
            logits_processors=[
                *([raw] if raw is not None else []),
                *_logit_bias(prepared.sampling),
                *_penalties(prepared.sampling, len(prepared.tokens)),
                *mask,
            ],
        )
        try:
            for token, _ in steps:
                row = raw.rows.popleft() if raw is not None else None
                if cancel.is_set() or token in vocab.eog:
                    return
                yield int(token), row
        finally:
            steps.close()

    def token_ids(self, prepared: Prepared, cancel: threading.Event) -> Generator[int, None, None]:
        """Sampled token ids, up to an end-of-generation token (excluded), max_tokens or cancel."""
        steps = self._steps(prepared, cancel)
        try:
            for token, _ in steps:
                yield token
        finally:
            steps.close()

    def generate(
        self, prepared: Prepared, cancel: threading.Event
    ) -> Iterator[str | Piece | Finish]:
        """Yield decoded text as tokens come; ends with one Finish."""
        _, vocab = self._require()
        text = TokenText(prepared.sampling.stop)
        top = prepared.sampling.logprobs
        pieces = vocab.pieces
        count = 0
        reason: FinishReason = "length"
        flush = True
        constraint = prepared.grammar.start() if prepared.grammar is not None else None
        tokens = self._steps(prepared, cancel, constraint)
        try:
            for token, row in tokens:
                count += 1
                if constraint is not None and constraint.fed < count:
                    constraint.feed(token)  # no step after it: max_tokens is reached
                piece = pieces[token] if token < len(pieces) else b""
                logprob = None if top is None else _logprob(row, token, top, vocab)
                out, stopped = text.add(piece, logprob)
                if out is not None:
                    yield out
                if stopped:
                    reason, flush = "stop", False
                    break
                if constraint is not None and constraint.done:
                    reason = "stop"  # the grammar is complete: nothing more may follow
                    break
            else:
                if cancel.is_set():
                    reason, flush = "cancelled", False
                elif count < prepared.max_tokens:
                    reason = "stop"
        finally:
            tokens.close()
        if flush and (tail := text.end()) is not None:
            yield tail
        yield Finish(reason=reason, prompt_tokens=len(prepared.tokens), completion_tokens=count,
                     stop_sequence=text.matched)  # fmt: skip

    def save_folder(self, dest: Path) -> None:
        """Write the loaded model as an mlx-lm folder (config, safetensors, tokenizer files).

        Weights keep the precision of the artifact they came from, whatever they are computed in.
        """
        import mlx.core as mx  # noqa: PLC0415
        from mlx.utils import tree_flatten  # noqa: PLC0415
        from mlx_lm.utils import save_config  # noqa: PLC0415

        model, vocab = self._require()
        weights = dict(tree_flatten(model.parameters()))
        for name, dtype in self._narrow.items():
            weights[name] = weights[name].astype(dtype)
        dest.mkdir(parents=True, exist_ok=True)
        mx.save_safetensors(str(dest / "model.safetensors"), weights, metadata={"format": "mlx"})
        save_config(dict(self._config), dest / "config.json")
        (dest / "tokenizer.json").write_text(json.dumps(self._tokenizer_doc, ensure_ascii=False))
        tok_config: dict[str, Any] = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": vocab.bos_text or None,
            "eos_token": vocab.eos_text or None,
        }
        if vocab.template is not None:
            (dest / "chat_template.jinja").write_text(vocab.template.source)
        (dest / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2))

    def close(self) -> None:
        """Drop the model and return MLX's cached buffers."""
        model, self._model = self._model, None
        self._vocab = None
        if model is not None:
            import mlx.core as mx  # noqa: PLC0415

            del model
            mx.clear_cache()


def _quant_config(quantized: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """mlx-lm's `quantization` entry: the commonest setting, and each layer that differs."""
    settings = Counter(tuple(sorted(p.items())) for p in quantized.values())
    common = dict(settings.most_common(1)[0][0])
    return {**common, **{path: p for path, p in quantized.items() if p != common}}
