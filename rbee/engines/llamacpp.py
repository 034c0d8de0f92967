"""llama.cpp through llama-cpp-python: GGUF models on CPU (and CUDA/Metal builds).

Generation drives `Llama.generate` token by token instead of `create_completion`, so that rbee
decodes UTF-8 incrementally (no re-detokenizing the whole answer per token), counts tokens exactly
for `usage`, and checks the cancel flag between every two tokens. Logprobs come from the logits
llama.cpp's sampler itself read for each sampled token (`llama_get_logits_ith(ctx, -1)`, still
in place when `Llama.generate` yields the token): no `logits_all`, no copy of every position's
logits, and nothing at all for a request that does not ask for them. A request's `logit_bias` is
added to the logits first in llama.cpp's sampler chain (a logits processor, before the penalties
and the samplers), as OpenAI applies it. A `response_format` is enforced in the same processor,
after the bias: llguidance (rbee.engines.grammar, the same library as on every engine) says which
tokens the grammar allows next and the others' logits become -inf, so top-k, top-p, min-p and the
temperature sample among allowed tokens only. llama.cpp's own GBNF sampler (`grammar=`) is not
used: one grammar compiler for every engine refuses the same schemas the same way.

Loaded with `embedding=True`, the model serves embeddings only. The pooling is the GGUF's own
(mean, CLS or last token, as its `*.pooling_type` says); a GGUF that declares none (a chat model)
is mean-pooled here. Vectors are scaled to unit length, as OpenAI's are. rbee fills llama.cpp's
batch itself rather than calling `Llama.embed`, which takes text only and silently truncates it:
OpenAI's API also takes token ids, and an input over the context must be refused, not cut.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rbee.api.openai import ChatRequest, CompletionRequest, EmbeddingInput, SamplingParams
from rbee.engines.base import (
    Embeddings,
    Finish,
    FinishReason,
    Piece,
    Prepared,
    check_embedding_tokens,
    check_logit_bias,
    fit_context,
)
from rbee.engines.detokenize import TokenText, logprob_of
from rbee.engines.grammar import Constraint, Vocabulary, grammar_for
from rbee.engines.repack import LLAMA_DEFAULT_REPACK, RepackChoice
from rbee.engines.tool_prompt import template_inputs
from rbee.errors import ApiError, EngineError

__all__ = ["LlamaCppEngine"]

log = logging.getLogger(__name__)

# llama-cpp-python's own server defaults for the samplers OpenAI's API does not expose.
_TOP_K = 40
_MIN_P = 0.05


class _Vocab:
    """What generation asks of the vocabulary per token: its bytes, its text for logprobs, and
    whether it ends generation. Asked of llama.cpp the first time a token comes up, then kept:
    reading all of a vocabulary at load (49k tokens for SmolLM2) took 0.16 s of every load.

    Used from the engine's one thread only.
    """

    def __init__(self, llama_cpp: Any, vocab: Any) -> None:
        self._lib = llama_cpp
        self._vocab = vocab
        self._buf = ctypes.create_string_buffer(256)
        self._pieces: dict[int, bytes] = {}
        self._texts: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}

    def _ask(self, token: int, special: bool) -> bytes:
        # `Llama.detokenize([token])` renders into a 32-byte buffer and returns nothing for
        # longer tokens (SmolLM2 has 47, such as a newline and 32 spaces): ask with room to spare.
        n = self._lib.llama_token_to_piece(self._vocab, token, self._buf, 256, 0, special)
        if n >= 0:
            return self._buf.raw[:n]
        big = ctypes.create_string_buffer(-n)  # -(bytes needed): ask again with that room
        n = self._lib.llama_token_to_piece(self._vocab, token, big, -n, 0, special)
        return big.raw[: max(n, 0)]

    def rendered(self, token: int) -> bytes:
        """The bytes of `token` with special tokens as their text (`<|im_end|>`), not cached:
        for reading the whole vocabulary once."""
        return self._ask(token, True)

    def piece(self, token: int) -> bytes:
        """The bytes `token` renders as in an answer (special tokens: nothing, as in the API)."""
        got = self._pieces.get(token)
        if got is None:
            got = self._pieces[token] = self._ask(token, False)
        return got

    def text(self, token: int) -> bytes:
        """The bytes `token` shows as in logprobs: an end-of-turn token among the alternatives
        shows as `<|im_end|>`, not as an empty string."""
        piece = self.piece(token)
        if piece:
            return piece
        got = self._texts.get(token)
        if got is None:
            got = self._texts[token] = self._ask(token, True)
        return got

    def is_eog(self, token: int) -> bool:
        """True if `token` ends generation (end of text, end of turn...)."""
        got = self._eog.get(token)
        if got is None:
            got = self._eog[token] = bool(self._lib.llama_vocab_is_eog(self._vocab, token))
        return got


class _GrammarMask:
    """The tokens a choice's grammar bans next, for the sampler to set to -inf.

    The mask is computed in the generation loop, right after the grammar is fed the last token
    (`advance`), not in llama.cpp's sampler callback: that callback re-enters Python from C, and
    every time the engine thread takes the GIL back it may wait for the worker's event loop thread
    to let go of it. One acquisition per token stays (the callback itself).
    """

    def __init__(self, constraint: Constraint, n_vocab: int) -> None:
        self.constraint = constraint
        self._n_vocab = n_vocab
        self.banned = constraint.banned(n_vocab)

    def advance(self, token: int) -> None:
        """Feed `token` to the grammar and compute the mask for the token after it."""
        self.constraint.feed(token)
        if not self.constraint.done:
            self.banned = self.constraint.banned(self._n_vocab)


def _logits_processor(sampling: SamplingParams, mask: _GrammarMask | None) -> list[Any] | None:
    """`Llama.generate`'s logits_processor: the request's logit_bias added, then the tokens its
    grammar does not allow next set to -inf; None when there is neither.

    llama-cpp-python runs it as the first sampler of the chain, on the candidates still in
    token-id order, so the scores are indexed by token id.
    """
    import numpy as np  # noqa: PLC0415 - a dependency of llama-cpp-python, used only here

    out = []
    if sampling.logit_bias:
        ids = np.array([t for t, _ in sampling.logit_bias], dtype=np.intc)
        biases = np.array([b for _, b in sampling.logit_bias], dtype=np.single)

        def add_bias(input_ids: Any, scores: Any) -> Any:
            scores[ids] += biases
            return scores

        out.append(add_bias)
    if mask is not None:

        def allow(input_ids: Any, scores: Any) -> Any:
            np.copyto(scores, -np.inf, where=mask.banned)
            return scores

        out.append(allow)
    return out or None


@dataclass(frozen=True)
class _GrammarTokens:
    """A loaded model's vocabulary as llguidance's TokenizerWrapper reads it: each token's bytes
    (a special token's marked by a leading 0xFF byte, as llguidance expects), the end tokens,
    and a way to tokenize text."""

    tokens: list[bytes]
    eos_token_id: int
    bos_token_id: int | None
    special_token_ids: list[int]
    tokenize: Callable[[bytes], list[int]]

    def __call__(self, text: bytes) -> list[int]:
        return self.tokenize(text)


def _lltokenizer(llama_cpp: Any, llm: Any) -> Any:
    """llguidance's tokenizer for a loaded model (its masks as long as the model's logits),
    ending on the model's end-of-generation tokens. (llguidance's own `llguidance.llamacpp`
    helper does the same through a binding llama-cpp-python deprecates.)"""
    from llguidance import LLTokenizer, TokenizerWrapper  # noqa: PLC0415 - on first use

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    texts = _Vocab(llama_cpp, vocab)
    special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
    user = llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
    tokens, specials, eog = [], [], []
    for token in range(llm.n_vocab()):
        text = texts.rendered(token)
        attr = llama_cpp.llama_vocab_get_attr(vocab, token)
        if attr & special or (attr & user and text.startswith(b"<") and text.endswith(b">")):
            text = b"\xff" + text
            specials.append(token)
        tokens.append(text)
        if texts.is_eog(token):
            eog.append(token)
    bos = llm.token_bos()
    wrapper = _GrammarTokens(
        tokens=tokens,
        eos_token_id=eog[0] if eog else llm.token_eos(),
        bos_token_id=bos if bos >= 0 else None,
        special_token_ids=specials,
        tokenize=lambda text: list(llm.tokenize(text, add_bos=False, special=False)),
    )
    try:
        return LLTokenizer(TokenizerWrapper(wrapper), eos_token=eog or None)
    except (ValueError, RuntimeError) as err:
        raise EngineError(f"llguidance cannot read this model's vocabulary: {err}") from err


@contextlib.contextmanager
def _extra_buffer_types(llama_cpp: Any, *, enabled: bool) -> Iterator[None]:
    """While a `Llama` is built, give it model params with `use_extra_bufts` set to `enabled`.

    `Llama()` takes no such argument: it fills its params from `llama_model_default_params()`,
    so that one function is wrapped for the duration of the load (one model per worker process,
    loaded on one thread). A binding too old to have the field cannot turn repacking off: that is
    said, not hidden.
    """
    module = llama_cpp.llama_cpp
    defaults = module.llama_model_default_params
    params_type: Any = getattr(module, "llama_model_params", None)
    fields = {name for name, *_ in getattr(params_type, "_fields_", ())}
    if enabled or "use_extra_bufts" not in fields:
        if not enabled:
            log.warning(
                "this llama-cpp-python cannot turn weight repacking off (no use_extra_bufts)"
            )
        yield
        return

    def without_extra_buffer_types() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    module.llama_model_default_params = without_extra_buffer_types
    try:
        yield
    finally:
        module.llama_model_default_params = defaults


class LlamaCppEngine:
    """One GGUF model loaded in llama.cpp."""

    name = "llamacpp"

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 4096,
        n_threads: int = 2,
        n_gpu_layers: int = 0,
        main_gpu: int | None = None,
        embedding: bool = False,
        cpu_repack: RepackChoice = LLAMA_DEFAULT_REPACK,
    ) -> None:
        """`n_gpu_layers` -1 offloads every layer (CUDA and Metal builds); `main_gpu` N keeps the
        model on that one CUDA GPU (`--device cuda:N`) instead of splitting it across all;
        `cpu_repack` says whether llama.cpp may repack the weights (rbee.engines.repack)."""
        self._path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._n_gpu_layers = n_gpu_layers
        self._main_gpu = main_gpu
        self.embedding = embedding
        self.cpu_repack = cpu_repack
        self._llm: Any = None
        self._formatter: Any = None
        self._template_source: str | None = None
        self._tokens: _Vocab | None = None
        self._grammar_vocab: Vocabulary | None = None
        self._pool_here = False

    @property
    def context_length(self) -> int:
        """Tokens of context the model was loaded with."""
        return self._n_ctx

    @property
    def embedding_length(self) -> int:
        """The length of the model's vectors (n_embd)."""
        return int(self._require().n_embd())

    def load(self) -> None:
        """Load the GGUF and its chat template."""
        try:
            import llama_cpp  # noqa: PLC0415 - engines import their library lazily
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415
        except ImportError as err:
            raise EngineError(f"llama-cpp-python is not installed: {err}") from err
        # Pooled embeddings need each input's tokens in one micro-batch: any input that fits the
        # context must fit the batch too. (512 is llama-cpp-python's own default.)
        batch = self._n_ctx if self.embedding else 512
        one_gpu = self._main_gpu is not None
        log.info("llama.cpp weight repacking %s: %s", self.cpu_repack.setting, self.cpu_repack.why)
        try:
            with _extra_buffer_types(llama_cpp, enabled=self.cpu_repack.on):
                llm = llama_cpp.Llama(
                    model_path=str(self._path),
                    n_ctx=self._n_ctx,
                    n_threads=self._n_threads,
                    n_threads_batch=self._n_threads,
                    n_gpu_layers=self._n_gpu_layers,
                    n_batch=batch,
                    n_ubatch=batch,
                    embedding=self.embedding,
                    verbose=False,
                    main_gpu=self._main_gpu or 0,
                    split_mode=(
                        llama_cpp.LLAMA_SPLIT_MODE_NONE
                        if one_gpu
                        else llama_cpp.LLAMA_SPLIT_MODE_LAYER
                    ),
                )
        except (ValueError, RuntimeError, OSError) as err:
            raise EngineError(f"llama.cpp could not load {self._path}: {err}") from err
        if self.embedding:
            self._load_for_embeddings(llama_cpp, llm)
            return
        self._tokens = _Vocab(llama_cpp, llama_cpp.llama_model_get_vocab(llm.model))
        self._grammar_vocab = Vocabulary(lambda: _lltokenizer(llama_cpp, llm))
        template = llm.metadata.get("tokenizer.chat_template")
        self._template_source = template or None
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm.detokenize([llm.token_eos()], special=True).decode(errors="replace"),
                bos_token=llm.detokenize([llm.token_bos()], special=True).decode(errors="replace"),
                add_generation_prompt=True,
            )
        self._llm = llm
        log.info("loaded %s (n_ctx=%d, threads=%d)", self._path.name, self._n_ctx, self._n_threads)

    def _load_for_embeddings(self, llama_cpp: Any, llm: Any) -> None:
        pooling = llm.pooling_type()
        if pooling == llama_cpp.LLAMA_POOLING_TYPE_RANK:
            llm.close()
            raise EngineError(
                f"{self._path.name} is a reranker (pooling 'rank'), not an embedding model"
            )
        self._pool_here = pooling == llama_cpp.LLAMA_POOLING_TYPE_NONE
        self._llm = llm
        log.info(
            "loaded %s for embeddings (n_embd=%d, pooling=%s, n_ctx=%d, threads=%d)",
            self._path.name,
            llm.n_embd(),
            "mean (rbee)" if self._pool_here else f"{pooling} (the GGUF's)",
            self._n_ctx,
            self._n_threads,
        )

    def _require(self) -> Any:
        if self._llm is None:
            raise EngineError("the model is not loaded")
        return self._llm

    def prepare(self, request: ChatRequest | CompletionRequest) -> Prepared:
        """Apply the GGUF's chat template (chat) and tokenize; refuse what overflows the context."""
        llm = self._require()
        if isinstance(request, ChatRequest):
            if self._formatter is None:
                raise ApiError(
                    400, "this model has no chat template; use /v1/completions", param="messages"
                )
            messages, tools = template_inputs(request, self._template_source)
            try:
                formatted = self._formatter(messages=messages, tools=tools)
            except Exception as err:
                raise ApiError(
                    400, f"the chat template rejected these messages: {err}", param="messages"
                ) from err
            tokens = llm.tokenize(
                formatted.prompt.encode(), add_bos=not formatted.added_special, special=True
            )
            prompt_param = "messages"
        else:
            tokens = llm.tokenize(request.prompt.encode(), add_bos=True, special=False)
            prompt_param = "prompt"
        check_logit_bias(request.sampling, llm.n_vocab())
        prepared = fit_context(tokens, request, self._n_ctx, param=prompt_param)
        if self._grammar_vocab is None:
            return prepared
        return replace(prepared, grammar=grammar_for(request, self._grammar_vocab))

    def _vocab(self) -> _Vocab:
        if self._tokens is None:
            raise EngineError("the model is not loaded")
        return self._tokens

    def _logits_row(self, llm: Any) -> Any:
        """The logits the last token was sampled from (a view: read it before the next decode)."""
        import llama_cpp  # noqa: PLC0415 - engines import their library lazily
        import numpy as np  # noqa: PLC0415 - a dependency of llama-cpp-python

        row = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))

    def generate(
        self, prepared: Prepared, cancel: threading.Event
    ) -> Iterator[str | Piece | Finish]:
        """Sample token by token, yielding decoded text; ends with one Finish."""
        llm, vocab = self._require(), self._vocab()
        sampling = prepared.sampling
        if sampling.seed is None:
            llm.set_seed(random.getrandbits(32))
        else:
            # Reusing the KV cache of an earlier prompt changes the batch shapes the logits are
            # computed with, and with them the last bits of the logits: enough to flip a sampled
            # token. A seeded request asks for reproducible text, so it starts from a clean cache.
            llm.reset()
            llm.set_seed(sampling.seed & 0xFFFFFFFF)
        text = TokenText(sampling.stop)
        top = sampling.logprobs
        grammar = (
            _GrammarMask(prepared.grammar.start(), llm.n_vocab())
            if prepared.grammar is not None
            else None
        )
        count = 0
        reason: FinishReason = "length"
        flush = True
        tokens = llm.generate(
            list(prepared.tokens),
            top_k=_TOP_K,
            top_p=sampling.top_p,
            min_p=_MIN_P,
            temp=sampling.temperature,
            repeat_penalty=1.0,
            frequency_penalty=sampling.frequency_penalty,
            presence_penalty=sampling.presence_penalty,
            logits_processor=_logits_processor(sampling, grammar),
        )
        try:
            for token in tokens:
                if cancel.is_set():
                    reason, flush = "cancelled", False
                    break
                if vocab.is_eog(token):
                    reason = "stop"
                    break
                if grammar is not None:
                    grammar.advance(token)
                count += 1
                logprob = (
                    None
                    if top is None
                    else logprob_of(self._logits_row(llm), token, top, vocab.text)
                )
                out, stopped = text.add(vocab.piece(token), logprob)
                if out is not None:
                    yield out
                if stopped:
                    reason, flush = "stop", False
                    break
                if grammar is not None and grammar.constraint.done:
                    reason = "stop"  # the grammar is complete: nothing more may follow
                    break
                if count >= prepared.max_tokens:
                    break
        finally:
            tokens.close()
        if flush and (tail := text.end()) is not None:
            yield tail
        yield Finish(reason=reason, prompt_tokens=len(prepared.tokens), completion_tokens=count,
                     stop_sequence=text.matched)  # fmt: skip

    def tokenize_inputs(self, inputs: Sequence[EmbeddingInput]) -> tuple[tuple[int, ...], ...]:
        """Tokenize texts as llama.cpp's own embedder does (BOS added); check every input."""
        llm = self._require()
        vocab = llm.n_vocab()
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, str):
                tokens = tuple(llm.tokenize(item.encode(), add_bos=True, special=False))
            else:
                tokens = item
            check_embedding_tokens(tokens, i, len(inputs), self._n_ctx, vocab)
            out.append(tokens)
        return tuple(out)

    def embed(self, inputs: Sequence[Sequence[int]], cancel: threading.Event) -> Embeddings:
        """Embed the inputs, as many per llama.cpp batch as fit; unit-length float32 vectors."""
        import llama_cpp  # noqa: PLC0415 - engines import their library lazily
        import numpy as np  # noqa: PLC0415 - a dependency of llama-cpp-python, used only here

        llm = self._require()
        if not self.embedding:
            raise EngineError("this model was not loaded for embeddings")
        n_embd, n_batch = llm.n_embd(), llm.n_batch
        n_seq_max = llm.context_params.n_seq_max
        batch, ctx = llm._batch, llm._ctx  # what Llama.embed itself drives
        vectors: list[bytes] = []
        sizes: list[int] = []

        def decode() -> None:
            ctx.kv_cache_clear()
            try:
                ctx.decode(batch)
            except RuntimeError as err:
                raise EngineError(f"llama.cpp could not embed: {err}") from err
            finally:
                batch.reset()
            if self._pool_here:
                rows = np.ctypeslib.as_array(
                    llama_cpp.llama_get_embeddings(ctx.ctx), shape=(sum(sizes), n_embd)
                )
                starts = np.cumsum([0, *sizes[:-1]])
                pooled = [
                    rows[start : start + size].mean(axis=0, dtype=np.float64)
                    for start, size in zip(starts, sizes, strict=True)
                ]
            else:
                pooled = [
                    np.ctypeslib.as_array(
                        llama_cpp.llama_get_embeddings_seq(ctx.ctx, seq), shape=(n_embd,)
                    ).astype(np.float64)
                    for seq in range(len(sizes))
                ]
            for vector in pooled:
                norm = float(np.linalg.norm(vector))
                if not np.isfinite(norm):
                    raise EngineError("llama.cpp returned an embedding that is not finite")
                unit = vector / norm if norm > 0 else vector
                vectors.append(unit.astype("<f4").tobytes())
            sizes.clear()

        batch.reset()
        for tokens in inputs:
            if cancel.is_set():
                raise EngineError("the embedding request was cancelled")
            if sizes and (sum(sizes) + len(tokens) > n_batch or len(sizes) >= n_seq_max):
                decode()
            batch.add_sequence(list(tokens), len(sizes), True)
            sizes.append(len(tokens))
        if sizes:
            decode()
        ctx.kv_cache_clear()
        return Embeddings(vectors=tuple(vectors), prompt_tokens=sum(len(t) for t in inputs))

    def close(self) -> None:
        """Release the llama.cpp model and context."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
