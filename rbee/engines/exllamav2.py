"""ExLlamaV2: EXL2 and GPTQ model folders on one NVIDIA GPU, through the dynamic generator.

The folder is read once, by pure code, into a ModelFolder (quantization, shape, chat template, end
tokens); the request -> job mapping (`sampler_settings`, `job_arguments`) is pure as well. Only a
few small functions touch torch and exllamav2, imported lazily, so the rest of rbee runs without
them, and another CUDA engine (ExLlamaV3, the successor of this no longer developed library) can
slot in beside this one, reusing the folder reading, the VRAM check and the shape of the mapping.

Each request is one ExLlamaV2DynamicJob, driven to its end by `generator.iterate()` on the worker's
engine thread. generate() checks the cancel flag between iterations (one token each once the prompt
is in, one chunk of prompt before that) and cancels the job on the generator when it is set. Stop
strings are cut by StopMatcher, as in every engine, so the text never contains them. A request with
a `logit_bias` is refused (400) before any work: this adapter does not apply one. So is one asking
for logprobs: this adapter does not read per-token logits from the dynamic generator. A
`response_format` is enforced by a sampling filter on the job (`GrammarFilter`, llguidance as on
every engine) that masks the logits of the tokens its grammar does not allow; the answer ends with
"stop" as soon as the grammar is complete.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from rbee.api.openai import ChatRequest, CompletionRequest, SamplingParams
from rbee.engines.base import Finish, FinishReason, Prepared, StopMatcher, fit_context
from rbee.engines.chat_template import ChatTemplate, folder_template_source
from rbee.engines.fit import artifact_bytes, check_fits, estimate_need
from rbee.engines.grammar import Constraint, Vocabulary, grammar_for, tokenizer_from_json
from rbee.engines.tool_prompt import template_inputs
from rbee.errors import ApiError, EngineError

__all__ = [
    "ExLlamaV2Engine",
    "GrammarFilter",
    "ModelFolder",
    "cache_tokens",
    "chat_template",
    "cuda_index",
    "job_arguments",
    "kv_cache_bytes",
    "read_folder",
    "sampler_settings",
]

log = logging.getLogger(__name__)

_INSTALL = "install the CUDA engine with `pip install 'rbee[cuda]'` (torch and exllamav2)"

# The dynamic generator keeps its cache in pages of 256 tokens; the cache holds whole pages.
_PAGE = 256

# OpenAI's API has no top_k or min_p: the same guards as the llama.cpp adapter (llama-cpp-python's
# server defaults), so one model samples alike on every engine.
_TOP_K = 40
_MIN_P = 0.05

# A safetensors file starts with the length of its JSON header; no real header is this big.
_MAX_HEADER = 100 << 20

Quantization = Literal["exl2", "gptq"]


@dataclass(frozen=True)
class ModelFolder:
    """What rbee needs to know about an EXL2/GPTQ folder before loading it."""

    path: Path
    quantization: Quantization
    layers: int
    kv_heads: int
    head_dim: int
    native_context: int | None
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool
    """Whether a plain completion prompt starts with the BOS token (HF's `add_bos_token`)."""
    eos_ids: tuple[int, ...]
    """End tokens named by config.json and generation_config.json."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise EngineError(f"{path}: cannot read it as JSON: {err}") from err
    if not isinstance(data, dict):
        raise EngineError(f"{path}: expected a JSON object")
    return data


def _token_text(value: object) -> str:
    """A special token as tokenizer_config.json writes it: a string or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _ids(value: object) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _tensor_quantization(folder: Path) -> Quantization | None:
    """EXL2 or GPTQ from the tensor names of the first safetensors file, for unsigned folders."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    try:
        with files[0].open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > _MAX_HEADER:
                return None
            names = json.loads(f.read(size)).keys()
    except (OSError, struct.error, ValueError, AttributeError):
        return None
    if any(n.endswith(".q_weight") for n in names):
        return "exl2"
    if any(n.endswith(".qweight") for n in names):
        return "gptq"
    return None


def _quantization(config: dict[str, Any], folder: Path) -> str | None:
    """The folder's quantization method: config.json's signature, AutoGPTQ's file, or tensors."""
    signature = config.get("quantization_config")
    if isinstance(signature, dict) and isinstance(signature.get("quant_method"), str):
        return str(signature["quant_method"]).lower()
    if (folder / "quantize_config.json").is_file():
        return "gptq"
    return _tensor_quantization(folder)


def _field(config: dict[str, Any], path: Path, *names: str, default: int | None = None) -> int:
    for name in names:
        value = config.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if default is None:
        raise EngineError(f"{path}: no positive integer {names[0]!r}; is this a complete model?")
    return default


def read_folder(path: Path) -> ModelFolder:
    """Check that `path` is an EXL2 or GPTQ model folder and read what loading it needs."""
    config_path = path / "config.json"
    if not config_path.is_file():
        raise EngineError(
            f"{path}: no config.json; ExLlamaV2 loads a model folder (config.json, tokenizer, "
            "*.safetensors) quantized as EXL2 or GPTQ"
        )
    config = _read_json(config_path)
    if not any(path.glob("*.safetensors")):
        raise EngineError(f"{path}: no *.safetensors weights beside config.json")
    method = _quantization(config, path)
    if method not in ("exl2", "gptq"):
        raise EngineError(
            f"{path}: quantization is {method or 'none'}, but the exllamav2 engine serves EXL2 "
            "and GPTQ folders; use an EXL2/GPTQ build of the model, or a GGUF with llamacpp"
        )
    heads = _field(config, config_path, "num_attention_heads")
    hidden = config.get("hidden_size")
    tokenizer_path = path / "tokenizer_config.json"
    tokenizer = _read_json(tokenizer_path) if tokenizer_path.is_file() else {}
    generation_path = path / "generation_config.json"
    generation = _read_json(generation_path) if generation_path.is_file() else {}
    bos = _token_text(tokenizer.get("bos_token"))
    add_bos = tokenizer.get("add_bos_token")
    eos_ids = dict.fromkeys(_ids(config.get("eos_token_id")) + _ids(generation.get("eos_token_id")))
    return ModelFolder(
        path=path,
        quantization="exl2" if method == "exl2" else "gptq",
        layers=_field(config, config_path, "num_hidden_layers"),
        kv_heads=_field(config, config_path, "num_key_value_heads", default=heads),
        head_dim=_field(
            config,
            config_path,
            "head_dim",
            default=hidden // heads if isinstance(hidden, int) and hidden > 0 else None,
        ),
        native_context=_field(config, config_path, "max_position_embeddings", default=0) or None,
        chat_template=folder_template_source(path, tokenizer),
        bos_token=bos,
        eos_token=_token_text(tokenizer.get("eos_token")),
        add_bos=add_bos if isinstance(add_bos, bool) else bool(bos),
        eos_ids=tuple(eos_ids),
    )


def cuda_index(device: str) -> int:
    """The GPU index of a device name: "cuda" and "cuda:0" are 0, "cuda:1" is 1."""
    kind, _, index = device.partition(":")
    if kind == "cuda" and (not index or index.isdigit()):
        return int(index or 0)
    raise EngineError(f"the exllamav2 engine runs on a CUDA device (cuda:N), not {device!r}")


def cache_tokens(n_ctx: int) -> int:
    """Tokens of KV cache for a context of `n_ctx`: whole pages of the dynamic generator."""
    return -(-n_ctx // _PAGE) * _PAGE


def kv_cache_bytes(folder: ModelFolder, tokens: int) -> int:
    """Bytes of an FP16 KV cache of `tokens` tokens: K and V, per layer, per KV head."""
    return 2 * folder.layers * folder.kv_heads * folder.head_dim * tokens * 2


def chat_template(folder: ModelFolder) -> ChatTemplate | None:
    """The folder's compiled chat template, None if it has none; EngineError if it is not Jinja."""
    if folder.chat_template is None:
        return None
    return ChatTemplate(
        folder.chat_template,
        bos_token=folder.bos_token,
        eos_token=folder.eos_token,
        where=str(folder.path),
    )


def sampler_settings(sampling: SamplingParams) -> dict[str, float | int]:
    """ExLlamaV2Sampler.Settings fields for a request's sampling parameters.

    Temperature 0 means greedy. The library's own repetition penalty (1.025 by default) is turned
    off: OpenAI's API has only the frequency and presence penalties, mapped one to one.
    """
    greedy = sampling.temperature <= 0
    return {
        "temperature": 1.0 if greedy else sampling.temperature,
        "top_k": 1 if greedy else _TOP_K,
        "top_p": sampling.top_p,
        "min_p": 0.0 if greedy else _MIN_P,
        "token_repetition_penalty": 1.0,
        "token_frequency_penalty": sampling.frequency_penalty,
        "token_presence_penalty": sampling.presence_penalty,
    }


def job_arguments(
    prepared: Prepared, stop_tokens: tuple[int, ...], filters: Sequence[GrammarFilter] = ()
) -> dict[str, Any]:
    """ExLlamaV2DynamicJob arguments for `prepared`, but its input_ids tensor and gen_settings;
    `filters` is the grammar filter of a request with a `response_format`."""
    arguments: dict[str, Any] = {
        "max_new_tokens": prepared.max_tokens,
        "seed": prepared.sampling.seed,
        "stop_conditions": list(stop_tokens),
        "decode_special_tokens": False,
    }
    if filters:
        arguments["filters"] = list(filters)
    return arguments


class GrammarFilter:
    """An ExLlamaV2 sampling filter that enforces a grammar with a logit mask.

    It speaks the protocol of `exllamav2.generator.filters.ExLlamaV2Filter` without importing it:
    the dynamic generator feeds it each sampled token, then (on its filter thread pool, while the
    GPU computes the next step: `use_background_worker`) asks it to prepare the mask for the next
    one, and has it set the logits of every token the grammar does not allow to -inf
    (`can_mask_logits`: a mask, not a set of allowed ids, which would be a Python set of most of
    the vocabulary inside a JSON string). `to_tensor` turns the numpy mask into the logits' kind
    (torch.from_numpy).
    """

    allow_return_type_list = True

    def __init__(
        self, constraint: Constraint, n_vocab: int, to_tensor: Callable[[Any], Any]
    ) -> None:
        self.constraint = constraint
        self.background_result: Future[Any] | None = None
        self._n_vocab = n_vocab
        self._to_tensor = to_tensor
        self._banned: Any = None

    def begin(self, prefix_str: str = "") -> None:
        """A job starts: the constraint is fresh (one per choice), so nothing to do."""

    def feed(self, token: Any) -> None:
        """The token sampled (a 1x1 tensor) advances the grammar."""
        self.constraint.feed(int(token))

    def next(self) -> tuple[Any, Any]:
        """The allowed-token-set protocol, which this filter does not use (it masks)."""
        raise NotImplementedError("GrammarFilter masks logits; the sampler never asks next()")

    def use_background_worker(self) -> bool:
        """Prepare masks on the generator's thread pool, overlapping the forward pass."""
        return True

    def can_mask_logits(self) -> bool:
        """The sampler may ask it to mask the logits directly."""
        return True

    def prepare_logit_mask(self) -> bool:
        """Compute the mask for the next token."""
        self._banned = self._to_tensor(self.constraint.banned(self._n_vocab))
        return True

    def mask_logits(self, logits: Any) -> Any:
        """Set the logits of the tokens the grammar does not allow next to -inf."""
        logits[self._banned] = float("-inf")
        return logits

    def background_next(self, pool: Executor) -> None:
        """Schedule next() on the pool (the protocol's; unused, as next() is)."""
        self.background_result = pool.submit(self.next)

    def background_prepare_logit_mask(self, pool: Executor) -> None:
        """Schedule prepare_logit_mask() on the pool."""
        self.background_result = pool.submit(self.prepare_logit_mask)

    def background_drop(self) -> None:
        """Wait out and forget a scheduled call."""
        if self.background_result is not None:
            self.background_result.result()
            self.background_result = None

    def get_next(self, mask: bool = False) -> Any:
        """The result of the scheduled call, or of a call made now."""
        if self.background_result is None:
            return self.prepare_logit_mask() if mask else self.next()
        result, self.background_result = self.background_result.result(), None
        return result


# ---- the few functions that touch torch and exllamav2 ----


def _import_libraries() -> tuple[Any, Any, Any]:
    """torch, exllamav2 and exllamav2.generator, or an EngineError saying what to install."""
    try:
        torch = importlib.import_module("torch")
        exl2 = importlib.import_module("exllamav2")
        generator = importlib.import_module("exllamav2.generator")
    except (ImportError, OSError, RuntimeError) as err:
        raise EngineError(f"cannot import the exllamav2 engine ({err}); {_INSTALL}") from err
    return torch, exl2, generator


def _free_vram(torch: Any, device: str) -> int:
    """Free bytes on the GPU, from the CUDA driver; EngineError if there is no such GPU."""
    index = cuda_index(device)
    if not torch.cuda.is_available():
        raise EngineError("torch sees no CUDA GPU; the exllamav2 engine needs an NVIDIA GPU")
    count = int(torch.cuda.device_count())
    if index >= count:
        raise EngineError(f"there is no {device}: torch sees {count} CUDA device(s)")
    free, _total = torch.cuda.mem_get_info(index)
    return int(free)


@dataclass
class _Loaded:
    torch: Any
    model: Any
    cache: Any
    tokenizer: Any
    generator: Any
    settings_type: Any
    job_type: Any


def _load(
    libs: tuple[Any, Any, Any], folder: ModelFolder, n_ctx: int, index: int, free: int
) -> _Loaded:
    """Config, model (on GPU `index` only), KV cache, tokenizer and dynamic generator."""
    torch, exl2, gen = libs
    config = exl2.ExLlamaV2Config(str(folder.path))
    if hasattr(config, "arch_compat_overrides"):
        config.arch_compat_overrides(quiet=True)
    config.max_seq_len = n_ctx
    config.max_input_len = min(config.max_input_len, cache_tokens(n_ctx))
    config.max_attention_size = config.max_input_len**2
    model = exl2.ExLlamaV2(config)
    try:
        # A manual split that gives the weights nothing on the GPUs before `index` and all the free
        # memory of `index` keeps the model on one device (load_autosplit would spill onto others).
        model.load(gpu_split=[0.0] * index + [free / (1 << 30)])
        cache = exl2.ExLlamaV2Cache(model, max_seq_len=cache_tokens(n_ctx))
        tokenizer = exl2.ExLlamaV2Tokenizer(config)
        try:
            generator = gen.ExLlamaV2DynamicGenerator(
                model=model, cache=cache, tokenizer=tokenizer, paged=True
            )
        except AssertionError as err:
            # Paged attention needs flash-attn >= 2.5.7; unpaged runs one job at a time, which is
            # all a worker asks of it.
            log.info("exllamav2: %s; using the unpaged generator", err)
            generator = gen.ExLlamaV2DynamicGenerator(
                model=model, cache=cache, tokenizer=tokenizer, paged=False
            )
    except BaseException:
        model.unload()
        _release(torch)
        raise
    return _Loaded(
        torch,
        model,
        cache,
        tokenizer,
        generator,
        gen.ExLlamaV2Sampler.Settings,
        gen.ExLlamaV2DynamicJob,
    )


def _release(torch: Any) -> None:
    gc.collect()
    torch.cuda.empty_cache()


def _encode(tokenizer: Any, text: str, *, add_bos: bool, special: bool) -> list[int]:
    ids = tokenizer.encode(text, add_bos=add_bos, encode_special_tokens=special)
    tokens: list[int] = ids.tolist()[0]
    return tokens


def _stop_tokens(tokenizer: Any, folder: ModelFolder) -> tuple[int, ...]:
    """The folder's end tokens, the tokenizer's EOS, and the id of the template's eos_token."""
    ids = [*folder.eos_ids, tokenizer.eos_token_id]
    if folder.eos_token:
        ids.append(tokenizer.single_id(folder.eos_token))
    return tuple(dict.fromkeys(i for i in ids if isinstance(i, int)))


def _settings(loaded: _Loaded, sampling: SamplingParams) -> Any:
    settings = loaded.settings_type()
    for name, value in sampler_settings(sampling).items():
        setattr(settings, name, value)
    return settings


class ExLlamaV2Engine:
    """One EXL2 or GPTQ model folder loaded in ExLlamaV2 on one GPU."""

    name = "exllamav2"

    def __init__(self, model_dir: Path, *, n_ctx: int = 4096, device: str = "cuda:0") -> None:
        self._dir = model_dir
        self._n_ctx = n_ctx
        self._device = device
        self._folder: ModelFolder | None = None
        self._template: ChatTemplate | None = None
        self._loaded: _Loaded | None = None
        self._stop_ids: tuple[int, ...] = ()
        self._grammar_vocab = Vocabulary(self._lltokenizer)

    @property
    def context_length(self) -> int:
        """Tokens of context the model was loaded with."""
        return self._n_ctx

    def load(self) -> None:
        """Check the folder and the free VRAM, then load the model, cache and generator."""
        folder = read_folder(self._dir)
        template = chat_template(folder)
        libs = _import_libraries()
        free = _free_vram(libs[0], self._device)
        need = estimate_need(
            artifact_bytes(folder.path),
            kv_cache=kv_cache_bytes(folder, cache_tokens(self._n_ctx)),
        )
        check_fits(folder.path.name, need, free, self._device)
        if folder.native_context and self._n_ctx > folder.native_context:
            log.warning(
                "%s was trained for %d tokens of context; %d were asked for",
                folder.path.name,
                folder.native_context,
                self._n_ctx,
            )
        try:
            loaded = _load(libs, folder, self._n_ctx, cuda_index(self._device), free)
        except (AssertionError, KeyError, ValueError, TypeError, OSError, RuntimeError) as err:
            raise EngineError(f"exllamav2 could not load {folder.path}: {err}") from err
        self._stop_ids = _stop_tokens(loaded.tokenizer, folder)
        self._folder, self._template, self._loaded = folder, template, loaded
        log.info(
            "loaded %s (%s, n_ctx=%d) on %s",
            folder.path.name,
            folder.quantization,
            self._n_ctx,
            self._device,
        )

    def _n_vocab(self, loaded: _Loaded) -> int | None:
        """The width of the model's logits (config.json's vocab_size), if the config says."""
        size = getattr(loaded.model.config, "vocab_size", None)
        return size if isinstance(size, int) and not isinstance(size, bool) else None

    def _lltokenizer(self) -> Any:
        """llguidance's tokenizer from the folder's tokenizer.json (what ExLlamaV2 reads too)."""
        folder, loaded = self._require()
        path = folder.path / "tokenizer.json"
        try:
            document = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ApiError(
                400,
                "constrained decoding (response_format, tool calls) needs the model's "
                f"tokenizer.json, which cannot be read: {err}",
                code="unsupported_parameter",
            ) from err
        return tokenizer_from_json(document, n_vocab=self._n_vocab(loaded), eos=self._stop_ids)

    def _require(self) -> tuple[ModelFolder, _Loaded]:
        if self._folder is None or self._loaded is None:
            raise EngineError("the model is not loaded")
        return self._folder, self._loaded

    def prepare(self, request: ChatRequest | CompletionRequest) -> Prepared:
        """Apply the chat template (chat) and tokenize; refuse what overflows the context."""
        folder, loaded = self._require()
        if request.sampling.logit_bias:
            raise ApiError(
                400,
                "logit_bias is not supported by the exllamav2 engine; send the request to a "
                "model served by llama.cpp or MLX, or leave logit_bias out",
                param="logit_bias",
                code="unsupported_parameter",
            )
        if request.sampling.logprobs is not None:
            raise ApiError(
                400,
                "logprobs are not available on engine exllamav2; send the request to a model "
                "served by llama.cpp or MLX, or leave logprobs out",
                param="logprobs",
                code="unsupported_parameter",
            )
        if isinstance(request, ChatRequest):
            if self._template is None:
                raise ApiError(
                    400, "this model has no chat template; use /v1/completions", param="messages"
                )
            messages, tools = template_inputs(request, self._template.source)
            try:
                text = self._template.render(messages, tools)
            except Exception as err:  # the template may raise anything: the messages are at fault
                raise ApiError(
                    400, f"the chat template rejected these messages: {err}", param="messages"
                ) from err
            # As transformers' apply_chat_template: the template writes any BOS itself.
            tokens = _encode(loaded.tokenizer, text, add_bos=False, special=True)
            param = "messages"
        else:
            tokens = _encode(
                loaded.tokenizer, request.prompt, add_bos=folder.add_bos, special=False
            )
            param = "prompt"
        if not tokens:
            raise ApiError(400, "the prompt is empty", param=param)
        prepared = fit_context(tokens, request, self._n_ctx, param=param)
        return replace(prepared, grammar=grammar_for(request, self._grammar_vocab))

    def _job(self, loaded: _Loaded, prepared: Prepared) -> tuple[Any, Constraint | None]:
        """The job for one choice of `prepared`, and its grammar's constraint if it has one."""
        constraint = prepared.grammar.start() if prepared.grammar is not None else None
        filters = []
        if constraint is not None:
            n_vocab = self._n_vocab(loaded) or self._grammar_vocab.get().vocab_size
            filters.append(GrammarFilter(constraint, n_vocab, loaded.torch.from_numpy))
        job = loaded.job_type(
            input_ids=loaded.torch.tensor([list(prepared.tokens)], dtype=loaded.torch.long),
            gen_settings=_settings(loaded, prepared.sampling),
            **job_arguments(prepared, self._stop_ids, filters),
        )
        return job, constraint

    def generate(self, prepared: Prepared, cancel: threading.Event) -> Iterator[str | Finish]:
        """Run one job through the dynamic generator, yielding its text; ends with one Finish."""
        _folder, loaded = self._require()
        generator = loaded.generator
        job, constraint = self._job(loaded, prepared)
        stops = StopMatcher(prepared.sampling.stop)
        reason: FinishReason = "length"
        count: int | None = None
        finished = False
        generator.enqueue(job)
        try:
            while not finished:
                if cancel.is_set():
                    reason = "cancelled"
                    break
                results = generator.iterate()
                if not results and not generator.num_remaining_jobs():
                    raise EngineError("exllamav2 dropped the job without finishing it")
                for result in results:
                    if result.get("job") is not job or result.get("stage") != "streaming":
                        continue
                    text, stopped = stops.feed(result.get("text", ""))
                    if text:
                        yield text
                    if stopped:
                        reason, finished = "stop", True
                        break
                    if constraint is not None and constraint.done and not result.get("eos"):
                        # The grammar is complete: end here rather than sample an end token.
                        tail = stops.flush()
                        if tail:
                            yield tail
                        reason, finished = "stop", True
                        break
                    if result.get("eos"):
                        finished = True
                        count = int(result["new_tokens"])
                        if result.get("eos_reason") == "stop_token":
                            # The end token is sampled and counted, but is no part of the answer.
                            reason, count = "stop", count - 1
                        tail = stops.flush()
                        if tail:
                            yield tail
                        break
        finally:
            if count is None:
                # Cancelled, cut by a stop string, or abandoned by the caller: free the job's pages.
                generator.cancel(job)
        if count is None:
            count = max(int(job.new_tokens), 0)
        yield Finish(reason=reason, prompt_tokens=len(prepared.tokens), completion_tokens=count,
                     stop_sequence=stops.matched)  # fmt: skip

    def close(self) -> None:
        """Unload the model and its cache and give the VRAM back to the driver."""
        loaded, self._loaded = self._loaded, None
        self._folder = self._template = None
        if loaded is not None:
            torch = loaded.torch
            loaded.model.unload()
            del loaded
            _release(torch)
