"""llama.cpp through llama-cpp-python: GGUF models on CPU (and CUDA/Metal builds).

Generation drives `Llama.generate` token by token instead of `create_completion`, so that rbee
decodes UTF-8 incrementally (no re-detokenizing the whole answer per token), counts tokens exactly
for `usage`, and checks the cancel flag between every two tokens.
"""

from __future__ import annotations

import codecs
import logging
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rbee.api.openai import ChatRequest, CompletionRequest
from rbee.engines.base import Finish, FinishReason, Prepared, StopMatcher
from rbee.errors import ApiError, EngineError

__all__ = ["LlamaCppEngine"]

log = logging.getLogger(__name__)

# llama-cpp-python's own server defaults for the samplers OpenAI's API does not expose.
_TOP_K = 40
_MIN_P = 0.05


class LlamaCppEngine:
    """One GGUF model loaded in llama.cpp."""

    name = "llamacpp"

    def __init__(
        self, model_path: Path, *, n_ctx: int = 4096, n_threads: int = 2, n_gpu_layers: int = 0
    ) -> None:
        self._path = model_path
        self._n_ctx = n_ctx
        self._n_threads = n_threads
        self._n_gpu_layers = n_gpu_layers
        self._llm: Any = None
        self._formatter: Any = None
        self._eog: frozenset[int] = frozenset()

    @property
    def context_length(self) -> int:
        """Tokens of context the model was loaded with."""
        return self._n_ctx

    def load(self) -> None:
        """Load the GGUF and its chat template."""
        try:
            import llama_cpp  # noqa: PLC0415 - engines import their library lazily
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: PLC0415
        except ImportError as err:
            raise EngineError(f"llama-cpp-python is not installed: {err}") from err
        try:
            llm = llama_cpp.Llama(
                model_path=str(self._path),
                n_ctx=self._n_ctx,
                n_threads=self._n_threads,
                n_threads_batch=self._n_threads,
                n_gpu_layers=self._n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as err:
            raise EngineError(f"llama.cpp could not load {self._path}: {err}") from err
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self._eog = frozenset(
            t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)
        )
        template = llm.metadata.get("tokenizer.chat_template")
        if template:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=llm.detokenize([llm.token_eos()], special=True).decode(errors="replace"),
                bos_token=llm.detokenize([llm.token_bos()], special=True).decode(errors="replace"),
                add_generation_prompt=True,
            )
        self._llm = llm
        log.info("loaded %s (n_ctx=%d, threads=%d)", self._path.name, self._n_ctx, self._n_threads)

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
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                formatted = self._formatter(messages=messages)
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
        room = self._n_ctx - len(tokens)
        if room < 1:
            raise ApiError(
                400,
                f"the prompt is {len(tokens)} tokens; this model's context is {self._n_ctx} tokens",
                param=prompt_param,
                code="context_length_exceeded",
            )
        wanted = request.sampling.max_tokens
        if wanted is not None and wanted > room:
            raise ApiError(
                400,
                f"max_tokens is too large: {wanted}. This model's context is {self._n_ctx} tokens "
                f"and the prompt uses {len(tokens)}, so at most {room} can be generated",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return Prepared(tokens=tuple(tokens), max_tokens=wanted or room, sampling=request.sampling)

    def generate(self, prepared: Prepared, cancel: threading.Event) -> Iterator[str | Finish]:
        """Sample token by token, yielding decoded text; ends with one Finish."""
        llm = self._require()
        sampling = prepared.sampling
        if sampling.seed is None:
            llm.set_seed(random.getrandbits(32))
        else:
            # Reusing the KV cache of an earlier prompt changes the batch shapes the logits are
            # computed with, and with them the last bits of the logits: enough to flip a sampled
            # token. A seeded request asks for reproducible text, so it starts from a clean cache.
            llm.reset()
            llm.set_seed(sampling.seed & 0xFFFFFFFF)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(sampling.stop)
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
        )
        try:
            for token in tokens:
                if cancel.is_set():
                    reason, flush = "cancelled", False
                    break
                if token in self._eog:
                    reason = "stop"
                    break
                count += 1
                text, stopped = stops.feed(decoder.decode(llm.detokenize([token])))
                if text:
                    yield text
                if stopped:
                    reason, flush = "stop", False
                    break
                if count >= prepared.max_tokens:
                    break
        finally:
            tokens.close()
        if flush:
            tail = stops.feed(decoder.decode(b"", final=True))[0] + stops.flush()
            if tail:
                yield tail
        yield Finish(reason=reason, prompt_tokens=len(prepared.tokens), completion_tokens=count)

    def close(self) -> None:
        """Release the llama.cpp model and context."""
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.close()
