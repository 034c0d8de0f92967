"""The ExLlamaV2 adapter: the real engine where a CUDA GPU is, its argument mapping everywhere.

There is no CUDA here, so the real test skips with its reason. The others install stand-ins for
`torch`, `exllamav2` and `exllamav2.generator` in sys.modules: they record what the adapter asks of
the library and stream scripted tokens the way ExLlamaV2DynamicGenerator does (a list of results
per iterate(), text per token, a last result with eos, eos_reason and new_tokens, the end token
counted in new_tokens, cancel() on the generator).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import struct
import sys
import threading
import time
import types
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rbee.api.openai import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    SamplingParams,
    parse_chat_request,
)
from rbee.api.tools import split_calls
from rbee.engines.base import Finish, Prepared
from rbee.engines.exllamav2 import (
    ExLlamaV2Engine,
    GrammarFilter,
    cache_tokens,
    cuda_index,
    job_arguments,
    kv_cache_bytes,
    read_folder,
    sampler_settings,
)
from rbee.engines.fit import artifact_bytes, estimate_need, format_bytes
from rbee.errors import ApiError, EngineError, InsufficientMemoryError
from rbee.worker.runner import EngineRunner
from tests.bytetok import FIRST_BYTE, byte_tokens, tokenizer_json

GIB = 1 << 30
EOS = 2  # config.json's eos_token_id
IM_END = 7  # the id of tokenizer_config.json's eos_token, "<|im_end|>"
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


# ---- the real engine, where there is one ----


def _cuda_and_exllamav2() -> bool:
    if importlib.util.find_spec("torch") is None or importlib.util.find_spec("exllamav2") is None:
        return False
    import torch  # noqa: PLC0415 - only where it is installed

    return bool(torch.cuda.is_available())


@pytest.mark.slow
@pytest.mark.skipif(
    not _cuda_and_exllamav2(),
    reason="needs an NVIDIA GPU with CUDA and the exllamav2 package",
)
def test_a_real_model_streams_a_greedy_answer_and_cancels() -> None:
    model_dir = os.environ.get("RBEE_TEST_EXL2_DIR")
    if not model_dir:
        pytest.skip("set RBEE_TEST_EXL2_DIR to an EXL2 or GPTQ model folder")
    engine = ExLlamaV2Engine(Path(model_dir), n_ctx=2048)
    engine.load()
    try:
        greedy = SamplingParams(max_tokens=24, temperature=0.0)
        request = ChatRequest(
            model="m",
            messages=(ChatMessage("user", "Name three colours of the rainbow."),),
            sampling=greedy,
        )
        prepared = engine.prepare(request)
        first = list(engine.generate(prepared, threading.Event()))
        pieces, finish = first[:-1], first[-1]
        assert all(isinstance(p, str) and p for p in pieces)
        assert isinstance(finish, Finish)
        assert finish.reason in ("stop", "length")
        assert finish.prompt_tokens == len(prepared.tokens)
        assert 0 < finish.completion_tokens <= 24
        assert "".join(map(str, pieces)).strip()
        # Greedy decoding is reproducible.
        assert list(engine.generate(prepared, threading.Event())) == first

        cancel = threading.Event()
        items = []
        for item in engine.generate(engine.prepare(request), cancel):
            items.append(item)
            cancel.set()
        assert isinstance(items[-1], Finish)
        assert items[-1].reason == "cancelled"
        assert items[-1].completion_tokens >= 1
    finally:
        engine.close()


# ---- stand-ins for torch and exllamav2 ----


class FakeTensor:
    def __init__(self, rows: list[list[int]], dtype: object = None) -> None:
        self.rows = rows
        self.dtype = dtype

    def tolist(self) -> list[list[int]]:
        return [list(r) for r in self.rows]


@dataclass
class Library:
    """The fake library's state and a log of the calls the adapter made."""

    calls: list[str] = field(default_factory=list)
    cuda: bool = True
    devices: int = 1
    free: int = 20 * GIB
    flash_attn: bool = True
    script: list[tuple[int, str]] = field(default_factory=list)
    jobs: list[FakeJob] = field(default_factory=list)
    cancelled: list[FakeJob] = field(default_factory=list)
    configs: list[FakeConfig] = field(default_factory=list)
    models: list[FakeModel] = field(default_factory=list)
    caches: list[dict[str, Any]] = field(default_factory=list)
    generators: list[FakeGenerator] = field(default_factory=list)
    encoded: list[tuple[str, bool, bool]] = field(default_factory=list)
    iterate_threads: set[str] = field(default_factory=set)
    iterate_delay: float = 0.0
    cancel_seen: threading.Event = field(default_factory=threading.Event)
    vocab_size: int = FIRST_BYTE + 256
    """The width of the fake model's logits."""
    sampled: list[int] = field(default_factory=list)


LIB = Library()


class FakeConfig:
    def __init__(self, model_dir: str) -> None:
        LIB.calls.append("config")
        self.model_dir = model_dir
        self.max_seq_len = 8192  # the model's own, as read from config.json
        self.max_input_len = 2048
        self.max_attention_size = 2048**2
        self.overrides: list[dict[str, Any]] = []
        LIB.configs.append(self)

    def arch_compat_overrides(self, **kwargs: Any) -> None:
        self.overrides.append(kwargs)


class FakeModel:
    def __init__(self, config: FakeConfig) -> None:
        LIB.calls.append("model")
        self.config = config
        self.gpu_split: list[float] | None = None
        self.unloaded = False
        LIB.models.append(self)

    def load(self, gpu_split: list[float] | None = None) -> None:
        LIB.calls.append("model.load")
        self.gpu_split = gpu_split

    def unload(self) -> None:
        LIB.calls.append("model.unload")
        self.unloaded = True


class FakeCache:
    def __init__(self, model: FakeModel, **kwargs: Any) -> None:
        LIB.calls.append("cache")
        LIB.caches.append(kwargs)


class FakeTokenizer:
    """One token per character; BOS is 1."""

    eos_token_id = EOS

    def __init__(self, config: FakeConfig) -> None:
        LIB.calls.append("tokenizer")

    def encode(self, text: str, add_bos: bool = False, encode_special_tokens: bool = False) -> Any:
        LIB.encoded.append((text, add_bos, encode_special_tokens))
        return FakeTensor([[1] * add_bos + [ord(c) for c in text]])

    def single_id(self, token: str) -> int | None:
        return {"<|im_end|>": IM_END}.get(token)


@dataclass
class FakeSettings:
    # ExLlamaV2Sampler.Settings' defaults
    token_repetition_penalty: float = 1.025
    token_frequency_penalty: float = 0.0
    token_presence_penalty: float = 0.0
    temperature: float = 0.8
    top_k: int = 50
    top_p: float = 0.8
    min_p: float = 0.0


class FakeSampler:
    Settings = FakeSettings


class FakeJob:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.new_tokens = 0
        self.started = False
        LIB.jobs.append(self)

    def step(self, generator: FakeGenerator) -> list[dict[str, Any]]:
        if not self.started:
            self.started = True
            return [
                {"job": self, "stage": "started", "eos": False},
                {"job": self, "stage": "prefill", "eos": False, "curr_progress": 1},
            ]
        token, text = LIB.script[self.new_tokens] if self.new_tokens < len(LIB.script) else (9, ".")
        filters = self.kwargs.get("filters") or []
        if filters:
            token, text = self.sample_through(filters, token, text)
        self.new_tokens += 1
        r: dict[str, Any] = {"job": self, "stage": "streaming", "eos": False}
        if token in self.kwargs["stop_conditions"]:
            r.update(eos=True, eos_reason="stop_token", new_tokens=self.new_tokens)
        elif self.new_tokens >= self.kwargs["max_new_tokens"]:
            r.update(eos=True, eos_reason="max_new_tokens", new_tokens=self.new_tokens, text=text)
        else:
            r.update(text=text)
        if r["eos"]:
            generator.jobs.remove(self)
        return [r]

    def sample_through(self, filters: list[Any], wanted: int, text: str) -> tuple[int, str]:
        """What ExLlamaV2's sampler does with mask filters: begin them at the first token, mask
        the logits (the model "wants" the scripted token most, the others alike), take the
        likeliest token left, feed it to every filter, then prepare their next masks on the
        generator's filter pool (here run at once)."""
        if self.new_tokens == 0:
            for f in filters:
                f.background_drop()
                f.begin("")
        logits = np.zeros(LIB.vocab_size, dtype=np.float32)
        logits[wanted] = 1.0
        for f in filters:
            assert f.can_mask_logits()
            assert f.get_next(mask=True) is True
            logits = f.mask_logits(logits)
        token = int(np.argmax(logits))
        if token != wanted:
            text = bytes([token - FIRST_BYTE]).decode(errors="replace")
        LIB.sampled.append(token)
        for f in filters:
            f.feed(token)
            assert f.use_background_worker()
            f.background_prepare_logit_mask(ImmediatePool())
        return token, text


class ImmediatePool:
    """A thread pool that runs what it is given at once (the generator's filter pool)."""

    def submit(self, fn: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_result(fn())
        return future


class FakeGenerator:
    def __init__(self, *, model: Any, cache: Any, tokenizer: Any, paged: bool = True) -> None:
        LIB.calls.append(f"generator(paged={paged})")
        if paged and not LIB.flash_attn:
            raise AssertionError("Paged attention required Flash Attention 2.5.7 or later")
        self.paged = paged
        self.jobs: list[FakeJob] = []
        self.iterations = 0
        LIB.generators.append(self)

    def enqueue(self, job: FakeJob) -> int:
        self.jobs.append(job)
        return 0

    def iterate(self) -> list[dict[str, Any]]:
        self.iterations += 1
        LIB.iterate_threads.add(threading.current_thread().name)
        time.sleep(LIB.iterate_delay)
        return [r for job in list(self.jobs) for r in job.step(self)]

    def num_remaining_jobs(self) -> int:
        return len(self.jobs)

    def cancel(self, job: FakeJob) -> None:
        LIB.cancelled.append(job)
        LIB.cancel_seen.set()
        if job in self.jobs:
            self.jobs.remove(job)


def _mem_get_info(index: int) -> tuple[int, int]:
    LIB.calls.append(f"mem_get_info({index})")
    return LIB.free, 24 * GIB


@pytest.fixture
def lib(monkeypatch: pytest.MonkeyPatch) -> Library:
    """Fake torch/exllamav2 in sys.modules, with a fresh call log."""
    global LIB  # noqa: PLW0603 - the fakes are classes the adapter instantiates itself
    LIB = Library()
    torch = types.ModuleType("torch")
    torch.long = "long"  # type: ignore[attr-defined]
    torch.tensor = FakeTensor  # type: ignore[attr-defined]
    torch.from_numpy = lambda array: array  # type: ignore[attr-defined]
    torch.cuda = types.SimpleNamespace(  # type: ignore[attr-defined]
        is_available=lambda: LIB.cuda,
        device_count=lambda: LIB.devices,
        mem_get_info=_mem_get_info,
        empty_cache=lambda: LIB.calls.append("empty_cache"),
    )
    exl2 = types.ModuleType("exllamav2")
    exl2.ExLlamaV2Config = FakeConfig  # type: ignore[attr-defined]
    exl2.ExLlamaV2 = FakeModel  # type: ignore[attr-defined]
    exl2.ExLlamaV2Cache = FakeCache  # type: ignore[attr-defined]
    exl2.ExLlamaV2Tokenizer = FakeTokenizer  # type: ignore[attr-defined]
    gen = types.ModuleType("exllamav2.generator")
    gen.ExLlamaV2DynamicGenerator = FakeGenerator  # type: ignore[attr-defined]
    gen.ExLlamaV2DynamicJob = FakeJob  # type: ignore[attr-defined]
    gen.ExLlamaV2Sampler = FakeSampler  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "exllamav2", exl2)
    monkeypatch.setitem(sys.modules, "exllamav2.generator", gen)
    return LIB


def _write_safetensors(path: Path, names: list[str], payload: int = 4096) -> None:
    header = json.dumps(
        {n: {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]} for n in names}
    ).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(payload))


def make_folder(
    path: Path,
    *,
    quantization: dict[str, Any] | None = None,
    tensors: tuple[str, ...] = ("model.layers.0.self_attn.q_proj.q_weight",),
    template: str | None = TEMPLATE,
) -> Path:
    """A small model folder: config.json, tokenizer_config.json, generation_config.json, weights."""
    path.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_size": 64,
        "max_position_embeddings": 8192,
        "eos_token_id": EOS,
        "bos_token_id": 1,
        "quantization_config": quantization or {"quant_method": "exl2", "bits": 4.0},
    }
    if quantization == {}:
        del config["quantization_config"]
    (path / "config.json").write_text(json.dumps(config))
    tokenizer: dict[str, Any] = {"bos_token": "<s>", "eos_token": {"content": "<|im_end|>"}}
    if template is not None:
        tokenizer["chat_template"] = template
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer))
    (path / "generation_config.json").write_text(json.dumps({"eos_token_id": [EOS, 5]}))
    _write_safetensors(path / "output.safetensors", list(tensors))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "tiny-exl2")


def loaded(folder: Path, **kwargs: Any) -> ExLlamaV2Engine:
    engine = ExLlamaV2Engine(folder, **kwargs)
    engine.load()
    return engine


def completion(prompt: str = "Hi", **sampling: Any) -> CompletionRequest:
    return CompletionRequest(model="m", prompt=prompt, sampling=SamplingParams(**sampling))


def run(engine: ExLlamaV2Engine, prepared: Prepared) -> tuple[list[str], Finish]:
    items = list(engine.generate(prepared, threading.Event()))
    assert isinstance(items[-1], Finish)
    assert all(isinstance(i, str) for i in items[:-1])
    return [str(i) for i in items[:-1]], items[-1]


# ---- loading ----


def test_load_sets_max_seq_len_and_keeps_the_model_on_its_gpu(lib: Library, folder: Path) -> None:
    lib.devices = 2
    engine = loaded(folder, n_ctx=1000, device="cuda:1")
    assert engine.context_length == 1000
    (config,) = lib.configs
    assert config.model_dir == str(folder)
    assert config.max_seq_len == 1000
    assert config.max_input_len == 1024  # a prompt chunk is at most the cache, in whole pages
    assert config.overrides == [{"quiet": True}]
    (model,) = lib.models
    assert model.gpu_split == [0.0, lib.free / GIB]  # nothing on cuda:0, everything on cuda:1
    assert lib.caches == [{"max_seq_len": 1024}]
    assert lib.generators[0].paged
    # The VRAM is checked on the right device before anything is loaded.
    assert lib.calls.index("mem_get_info(1)") < lib.calls.index("config")
    assert lib.calls[-1] == "generator(paged=True)"


def test_without_flash_attn_the_generator_is_unpaged(lib: Library, folder: Path) -> None:
    lib.flash_attn = False
    loaded(folder)
    assert [c for c in lib.calls if c.startswith("generator")] == [
        "generator(paged=True)",
        "generator(paged=False)",
    ]
    assert not lib.generators[0].paged


def test_vram_check_refuses_before_any_load(lib: Library, folder: Path) -> None:
    lib.free = 50 << 20
    engine = ExLlamaV2Engine(folder, n_ctx=4096)
    with pytest.raises(InsufficientMemoryError) as caught:
        engine.load()
    need = estimate_need(artifact_bytes(folder), kv_cache=2 * 2 * 2 * 16 * 4096 * 2)
    message = str(caught.value)
    assert format_bytes(need) in message
    assert format_bytes(lib.free) in message
    assert "cuda:0" in message
    assert lib.calls == ["mem_get_info(0)"]


def test_the_kv_cache_counts_in_the_vram_check(lib: Library, folder: Path) -> None:
    # Weights alone fit; a context of 512k tokens adds 2*2*2*16*2 = 256 bytes per token = 128 MiB.
    weights = estimate_need(artifact_bytes(folder))
    lib.free = weights + (64 << 20)
    loaded(folder, n_ctx=4096)
    with pytest.raises(InsufficientMemoryError):
        loaded(folder, n_ctx=512 * 1024)


def test_missing_library_names_the_extra(
    lib: Library, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "exllamav2", None)
    with pytest.raises(EngineError, match=r"rbee\[cuda\]"):
        ExLlamaV2Engine(folder).load()
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(EngineError, match=r"rbee\[cuda\]"):
        ExLlamaV2Engine(folder).load()
    assert lib.calls == []


def test_no_cuda_gpu_is_an_engine_error(lib: Library, folder: Path) -> None:
    lib.cuda = False
    with pytest.raises(EngineError, match="NVIDIA GPU"):
        ExLlamaV2Engine(folder).load()
    lib.cuda = True
    with pytest.raises(EngineError, match="no cuda:3"):
        ExLlamaV2Engine(folder, device="cuda:3").load()
    with pytest.raises(EngineError, match="not 'cpu'"):
        ExLlamaV2Engine(folder, device="cpu").load()
    assert "config" not in lib.calls


def test_a_folder_without_config_json_is_refused(lib: Library, tmp_path: Path) -> None:
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    with pytest.raises(EngineError, match=r"no config\.json"):
        ExLlamaV2Engine(empty).load()
    assert lib.calls == []


def test_a_library_failure_while_loading_is_an_engine_error(
    lib: Library, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(self: FakeCache, model: FakeModel, **kwargs: Any) -> None:
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(FakeCache, "__init__", out_of_memory)
    with pytest.raises(EngineError, match=r"could not load .*: CUDA out of memory"):
        ExLlamaV2Engine(folder).load()
    assert lib.models[0].unloaded
    assert "empty_cache" in lib.calls


@pytest.mark.parametrize(
    ("quantization", "tensors", "files", "expected"),
    [
        ({"quant_method": "exl2", "bits": 4.25}, (), (), "exl2"),
        ({"quant_method": "gptq", "bits": 4}, (), (), "gptq"),
        ({}, (), ("quantize_config.json",), "gptq"),
        ({}, ("model.layers.0.mlp.up_proj.q_weight",), (), "exl2"),
        ({}, ("model.layers.0.mlp.up_proj.qweight",), (), "gptq"),
    ],
)
def test_the_quantization_is_read_from_the_folder(
    tmp_path: Path,
    quantization: dict[str, Any],
    tensors: tuple[str, ...],
    files: tuple[str, ...],
    expected: str,
) -> None:
    path = make_folder(tmp_path / "m", quantization=quantization, tensors=tensors)
    for name in files:
        (path / name).write_text("{}")
    info = read_folder(path)
    assert info.quantization == expected
    assert (info.layers, info.kv_heads, info.head_dim) == (2, 2, 16)
    assert info.eos_ids == (EOS, 5)
    assert info.native_context == 8192


@pytest.mark.parametrize(
    ("quantization", "tensors", "reason"),
    [
        ({"quant_method": "awq"}, (), "quantization is awq"),
        ({}, ("model.layers.0.mlp.up_proj.weight",), "quantization is none"),
    ],
)
def test_other_formats_are_refused(
    tmp_path: Path, quantization: dict[str, Any], tensors: tuple[str, ...], reason: str
) -> None:
    path = make_folder(tmp_path / "m", quantization=quantization, tensors=tensors)
    with pytest.raises(EngineError, match=reason):
        read_folder(path)


def test_a_folder_without_weights_is_refused(tmp_path: Path) -> None:
    path = make_folder(tmp_path / "m")
    (path / "output.safetensors").unlink()
    with pytest.raises(EngineError, match=r"no \*\.safetensors"):
        read_folder(path)


# ---- the request -> job mapping ----


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        (
            SamplingParams(
                temperature=0.7, top_p=0.9, frequency_penalty=0.5, presence_penalty=0.25
            ),
            {
                "temperature": 0.7,
                "top_k": 40,
                "top_p": 0.9,
                "min_p": 0.05,
                "token_repetition_penalty": 1.0,
                "token_frequency_penalty": 0.5,
                "token_presence_penalty": 0.25,
            },
        ),
        (
            SamplingParams(temperature=0.0, frequency_penalty=-1.0),
            {
                "temperature": 1.0,
                "top_k": 1,
                "top_p": 1.0,
                "min_p": 0.0,
                "token_repetition_penalty": 1.0,
                "token_frequency_penalty": -1.0,
                "token_presence_penalty": 0.0,
            },
        ),
    ],
)
def test_sampler_settings(sampling: SamplingParams, expected: dict[str, float]) -> None:
    assert sampler_settings(sampling) == expected


def test_job_arguments() -> None:
    prepared = Prepared(tokens=(1, 2, 3), max_tokens=17, sampling=SamplingParams(seed=5))
    assert job_arguments(prepared, (2, 7)) == {
        "max_new_tokens": 17,
        "seed": 5,
        "stop_conditions": [2, 7],
        "decode_special_tokens": False,
    }


@pytest.mark.parametrize(("device", "index"), [("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)])
def test_cuda_index(device: str, index: int) -> None:
    assert cuda_index(device) == index


@pytest.mark.parametrize("device", ["cpu", "metal:0", "cuda:x", "cuda:-1"])
def test_cuda_index_refuses_other_devices(device: str) -> None:
    with pytest.raises(EngineError):
        cuda_index(device)


@pytest.mark.parametrize(("n_ctx", "tokens"), [(1, 256), (256, 256), (1000, 1024), (4096, 4096)])
def test_the_cache_holds_whole_pages(n_ctx: int, tokens: int) -> None:
    assert cache_tokens(n_ctx) == tokens


def test_kv_cache_bytes(tmp_path: Path) -> None:
    info = read_folder(make_folder(tmp_path / "m"))
    # K and V, 2 layers, 2 KV heads of 16, FP16
    assert kv_cache_bytes(info, 1000) == 2 * 2 * 2 * 16 * 1000 * 2


def test_the_job_gets_the_request(lib: Library, folder: Path) -> None:
    engine = loaded(folder)
    request = completion(
        "Hi",
        max_tokens=3,
        temperature=0.7,
        top_p=0.9,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        seed=42,
    )
    prepared = engine.prepare(request)
    assert prepared.tokens == (1, ord("H"), ord("i"))  # add_bos: tokenizer_config names a BOS
    assert prepared.max_tokens == 3
    run(engine, prepared)
    (job,) = lib.jobs
    assert job.kwargs["input_ids"].tolist() == [[1, ord("H"), ord("i")]]
    assert job.kwargs["input_ids"].dtype == "long"
    assert job.kwargs["max_new_tokens"] == 3
    assert job.kwargs["seed"] == 42
    # config.json's and generation_config.json's end tokens, and the template's eos_token
    assert job.kwargs["stop_conditions"] == [EOS, 5, IM_END]
    settings = job.kwargs["gen_settings"]
    assert (settings.temperature, settings.top_p, settings.top_k, settings.min_p) == (
        0.7,
        0.9,
        40,
        0.05,
    )
    assert settings.token_frequency_penalty == 0.5
    assert settings.token_presence_penalty == 0.25
    assert settings.token_repetition_penalty == 1.0


# ---- prompts ----


def test_chat_uses_the_folders_template(lib: Library, folder: Path) -> None:
    engine = loaded(folder)
    request = ChatRequest(
        model="m",
        messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "hi")),
        sampling=SamplingParams(),
    )
    prepared = engine.prepare(request)
    text = "<s><|system|>Be brief.<|im_end|><|user|>hi<|im_end|><|assistant|>"
    assert lib.encoded[-1] == (text, False, True)  # the template wrote the BOS itself
    assert prepared.tokens == tuple(ord(c) for c in text)
    assert prepared.max_tokens == 4096 - len(text)


def test_no_template_refuses_chat_but_serves_completions(lib: Library, tmp_path: Path) -> None:
    engine = loaded(make_folder(tmp_path / "m", template=None))
    chat = ChatRequest(model="m", messages=(ChatMessage("user", "hi"),), sampling=SamplingParams())
    with pytest.raises(ApiError) as caught:
        engine.prepare(chat)
    assert caught.value.status == 400
    assert caught.value.param == "messages"
    assert engine.prepare(completion("hi")).tokens == (1, ord("h"), ord("i"))


def test_a_template_that_raises_is_a_400(lib: Library, tmp_path: Path) -> None:
    strict = "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}x"
    engine = loaded(make_folder(tmp_path / "m", template=strict))
    chat = ChatRequest(
        model="m", messages=(ChatMessage("assistant", "hi"),), sampling=SamplingParams()
    )
    with pytest.raises(ApiError, match="user first") as caught:
        engine.prepare(chat)
    assert caught.value.status == 400


def test_a_template_that_is_not_jinja_fails_the_load(lib: Library, tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="not valid Jinja"):
        loaded(make_folder(tmp_path / "m", template="{% for %}"))
    assert lib.calls == []


def test_prompts_that_overflow_the_context_are_refused(lib: Library, folder: Path) -> None:
    engine = loaded(folder, n_ctx=300)
    with pytest.raises(ApiError) as caught:
        engine.prepare(completion("x" * 300))
    assert (caught.value.status, caught.value.code) == (400, "context_length_exceeded")
    assert caught.value.param == "prompt"
    with pytest.raises(ApiError) as caught:
        engine.prepare(completion("x" * 200, max_tokens=100))
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "max_tokens")
    assert "at most 99" in caught.value.message
    assert engine.prepare(completion("x" * 200, max_tokens=99)).max_tokens == 99


def test_logit_bias_is_refused_before_any_work(lib: Library, folder: Path) -> None:
    engine = loaded(folder)
    lib.encoded.clear()
    with pytest.raises(ApiError) as caught:
        engine.prepare(completion("Hi", logit_bias=((100, -100.0),)))
    assert (caught.value.status, caught.value.param) == (400, "logit_bias")
    assert caught.value.code == "unsupported_parameter"
    assert "exllamav2" in caught.value.message
    assert lib.encoded == []  # not even tokenized


@pytest.mark.parametrize("logprobs", [0, 5])
def test_logprobs_are_refused_before_any_work(lib: Library, folder: Path, logprobs: int) -> None:
    engine = loaded(folder)
    lib.encoded.clear()
    with pytest.raises(ApiError) as caught:
        engine.prepare(completion("Hi", logprobs=logprobs))
    assert (caught.value.status, caught.value.param) == (400, "logprobs")
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.message.startswith("logprobs are not available on engine exllamav2")
    assert lib.encoded == []  # not even tokenized


# ---- streaming ----


def test_streaming_yields_the_pieces_and_an_exact_finish(lib: Library, folder: Path) -> None:
    lib.script = [(100, "Hel"), (101, "lo"), (102, " there"), (IM_END, "")]
    engine = loaded(folder)
    prepared = engine.prepare(completion("Hi"))
    pieces, finish = run(engine, prepared)
    assert pieces == ["Hel", "lo", " there"]
    # The end token is sampled and counted by the library, but is not part of the answer.
    assert finish == Finish(reason="stop", prompt_tokens=3, completion_tokens=3)
    assert lib.cancelled == []


def test_max_tokens_ends_with_length(lib: Library, folder: Path) -> None:
    lib.script = [(100, "a"), (101, "b"), (102, "c"), (103, "d")]
    engine = loaded(folder)
    pieces, finish = run(engine, engine.prepare(completion("Hi", max_tokens=3)))
    assert pieces == ["a", "b", "c"]
    assert finish == Finish(reason="length", prompt_tokens=3, completion_tokens=3)


def test_cancel_cancels_the_job(lib: Library, folder: Path) -> None:
    lib.script = [(100, "one"), (101, " two"), (102, " three"), (EOS, "")]
    engine = loaded(folder)
    cancel = threading.Event()
    items: list[str | Finish] = []
    for item in engine.generate(engine.prepare(completion("Hi")), cancel):
        items.append(item)
        cancel.set()
    assert items == ["one", Finish(reason="cancelled", prompt_tokens=3, completion_tokens=1)]
    assert lib.cancelled == lib.jobs
    (generator,) = lib.generators
    assert generator.iterations == 2  # prefill, then one token: nothing after the flag was set
    assert generator.num_remaining_jobs() == 0


def test_stop_strings_cut_the_text(lib: Library, folder: Path) -> None:
    lib.script = [(100, "Hel"), (101, "lo t"), (102, "here"), (103, " friend"), (EOS, "")]
    engine = loaded(folder)
    pieces, finish = run(engine, engine.prepare(completion("Hi", stop=("o th",))))
    assert "".join(pieces) == "Hell"
    assert finish == Finish("stop", prompt_tokens=3, completion_tokens=3, stop_sequence="o th")
    assert lib.cancelled == lib.jobs  # the job's cache pages are freed at once


def test_a_stop_string_prefix_is_released_at_the_end(lib: Library, folder: Path) -> None:
    lib.script = [(100, "Hel"), (101, "lo t"), (EOS, "")]
    engine = loaded(folder)
    pieces, finish = run(engine, engine.prepare(completion("Hi", stop=("o th",))))
    assert "".join(pieces) == "Hello t"
    assert finish.reason == "stop"
    assert finish.completion_tokens == 2


def test_an_abandoned_generation_cancels_its_job(lib: Library, folder: Path) -> None:
    lib.script = [(100, "a"), (101, "b"), (EOS, "")]
    engine = loaded(folder)
    stream = engine.generate(engine.prepare(completion("Hi")), threading.Event())
    assert next(stream) == "a"
    stream.close()
    assert lib.cancelled == lib.jobs


def test_close_unloads_and_frees_vram(lib: Library, folder: Path) -> None:
    engine = loaded(folder)
    lib.calls.clear()
    engine.close()
    assert lib.calls == ["model.unload", "empty_cache"]
    with pytest.raises(EngineError, match="not loaded"):
        engine.prepare(completion())
    engine.close()  # twice is harmless


async def test_generation_runs_on_the_engine_thread_and_a_client_leaving_cancels(
    lib: Library, folder: Path
) -> None:
    lib.script = [(100, "a"), (101, "b"), (IM_END, "")]
    async with EngineRunner(ExLlamaV2Engine(folder), niceness=0) as runner:
        items = [item async for item in runner.stream(await runner.prepare(completion("Hi")))]
        assert items == ["a", "b", Finish(reason="stop", prompt_tokens=3, completion_tokens=2)]
        assert lib.iterate_threads == {"engine-exllamav2"}  # never the event loop's thread

        lib.script, lib.iterate_delay = [], 0.001  # an answer of 4093 tokens, one per ms
        async for _ in runner.stream(await runner.prepare(completion("Hi"))):
            break  # the client goes away after the first piece
        assert await asyncio.to_thread(lib.cancel_seen.wait, 10)
        assert lib.cancelled == [lib.jobs[1]]
        assert lib.generators[0].num_remaining_jobs() == 0
        assert lib.jobs[1].new_tokens < 4093
    assert runner.stats.cancelled == 1
    assert runner.stats.last_finish["reason"] == "cancelled"


# ---- structured outputs: a grammar filter on the job ----

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "role": {"enum": ["admin", "user"]}},
    "required": ["name", "role"],
    "additionalProperties": False,
}
ANSWER = '{"name": "Al", "role": "user"}'


def structured(**sampling: Any) -> ChatRequest:
    return parse_chat_request({
        "model": "m", "messages": [{"role": "user", "content": "Who?"}], **sampling,
        "response_format": {"type": "json_schema",
                            "json_schema": {"name": "person", "schema": PERSON, "strict": True}},
    })  # fmt: skip


def script(text: str) -> list[tuple[int, str]]:
    """The fake model writes `text`, one byte-token at a time (tests/bytetok.py's ids)."""
    return [(t, chr(t - FIRST_BYTE)) for t in byte_tokens(text)]


@pytest.fixture
def tokenized(folder: Path) -> Path:
    """The tiny model folder with a real tokenizer.json (one token per byte)."""
    (folder / "tokenizer.json").write_text(tokenizer_json())
    return folder


def test_a_response_format_puts_a_grammar_filter_on_the_job(lib: Library, tokenized: Path) -> None:
    engine = loaded(tokenized)
    lib.configs[0].vocab_size = lib.vocab_size = FIRST_BYTE + 256 + 32  # logits wider than vocab
    # The model would go on after the object; the answer ends where the grammar does.
    lib.script = script(ANSWER + "\n\nAnything else?")
    pieces, finish = run(engine, engine.prepare(structured()))
    assert "".join(pieces) == ANSWER
    assert json.loads("".join(pieces)) == {"name": "Al", "role": "user"}
    assert finish == Finish(reason="stop", prompt_tokens=finish.prompt_tokens,
                            completion_tokens=len(ANSWER))  # fmt: skip
    (job,) = lib.jobs
    (grammar_filter,) = job.kwargs["filters"]
    assert isinstance(grammar_filter, GrammarFilter)
    assert "filter_prefer_eos" not in job.kwargs
    assert lib.cancelled == [job]  # ended by rbee, no end token sampled
    assert lib.sampled == byte_tokens(ANSWER)


def test_the_mask_overrules_what_the_model_wants(lib: Library, tokenized: Path) -> None:
    engine = loaded(tokenized)
    lib.script = script('Sure! {"name": "Al", "role": "boss"}')
    pieces, finish = run(engine, engine.prepare(structured(max_tokens=1)))
    # "S" is masked out: the only token the grammar allows first is the opening brace.
    assert (pieces, finish.reason, finish.completion_tokens) == (["{"], "length", 1)


def test_an_enum_admits_only_its_values(lib: Library, tokenized: Path) -> None:
    engine = loaded(tokenized)
    lib.script = script('{"name": "Al", "role": "boss"}')
    pieces, _ = run(engine, engine.prepare(structured(max_tokens=len('{"name": "Al", "role": "'))))
    assert "".join(pieces) == '{"name": "Al", "role": "'
    engine = loaded(tokenized)
    lib.sampled.clear()
    pieces, finish = run(engine, engine.prepare(structured(max_tokens=40)))
    # "b" is masked: the likeliest allowed token is taken instead ("a", the fake model has no
    # preference among them), then the grammar leaves one way on, and the answer stays valid.
    assert json.loads("".join(pieces)) == {"name": "Al", "role": "admin"}
    assert finish.reason == "stop"


def test_max_tokens_before_the_grammar_ends_is_length(lib: Library, tokenized: Path) -> None:
    engine = loaded(tokenized)
    lib.script = script(ANSWER)
    pieces, finish = run(engine, engine.prepare(structured(max_tokens=5)))
    assert ("".join(pieces), finish.reason, finish.completion_tokens) == ('{"nam', "length", 5)


def test_a_model_without_tokenizer_json_refuses_response_format(lib: Library, folder: Path) -> None:
    engine = loaded(folder)
    with pytest.raises(ApiError) as caught:
        engine.prepare(structured())
    assert (caught.value.status, caught.value.param) == (400, "response_format.json_schema")
    assert "tokenizer.json" in caught.value.message
    with pytest.raises(ApiError) as caught:
        engine.prepare(with_tools(tool_choice="required"))
    assert (caught.value.status, caught.value.param) == (400, "tools")
    assert "tokenizer.json" in caught.value.message
    assert engine.prepare(completion("Hi")).grammar is None


CLOCK = {"type": "function", "function": {"name": "clock"}}


def with_tools(**fields: Any) -> ChatRequest:
    return parse_chat_request({
        "model": "m", "messages": [{"role": "user", "content": "Time?"}], "tools": [CLOCK],
        **fields,
    })  # fmt: skip


def test_a_required_call_is_held_to_the_call_grammar(lib: Library, tokenized: Path) -> None:
    engine = loaded(tokenized)
    # The model would rather chat: the grammar makes the answer a call, and ends it there.
    lib.script = script("Sure, it is noon.")
    prepared = engine.prepare(with_tools(tool_choice="required", parallel_tool_calls=False))
    pieces, finish = run(engine, prepared)
    content, calls = split_calls("".join(pieces))
    assert content == ""
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [("clock", "{}")]
    assert finish.reason == "stop"


def test_job_arguments_carry_the_filters() -> None:
    prepared = Prepared(tokens=(1,), max_tokens=4, sampling=SamplingParams())
    marker = object()
    assert job_arguments(prepared, (2,), [marker])["filters"] == [marker]
