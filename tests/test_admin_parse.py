"""POST /v1/workers bodies: defaults filled in, bad fields refused by name."""

from __future__ import annotations

from typing import Any

import pytest

from rbee.api.workers import WorkerSpec, parse_worker_spec
from rbee.errors import ApiError


def test_defaults() -> None:
    assert parse_worker_spec({"model": "m"}) == WorkerSpec(model="m")
    assert parse_worker_spec(
        {"model": "m", "engine": "llamacpp", "device": "cpu", "ctx_size": 512, "threads": 2}
    ) == WorkerSpec(model="m", engine="llamacpp", device="cpu", ctx_size=512, threads=2)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "model"),
        ({"model": ""}, "model"),
        ({"model": 5}, "model"),
        ({"model": "m", "ctx_size": 10}, "ctx_size"),
        ({"model": "m", "ctx_size": True}, "ctx_size"),
        ({"model": "m", "threads": -1}, "threads"),
        ({"model": "m", "engine": 3}, "engine"),
        ({"model": "m", "device": "x" * 40}, "device"),
        ({"model": "m", "device": "cpu\n"}, "device"),
    ],
)
def test_bad_fields(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_worker_spec(body)
    assert caught.value.status == 400
    assert caught.value.param == param


def test_non_object_body() -> None:
    with pytest.raises(ApiError):
        parse_worker_spec(["m"])
