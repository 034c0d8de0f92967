"""The queen's record of answered requests (rbee.queen.ledger)."""

from __future__ import annotations

import pytest

from rbee.queen.ledger import Answered, Ledger, completion_tokens


def test_the_last_requests_newest_first_and_bounded() -> None:
    ledger = Ledger(size=3)
    for i in range(5):
        ledger.add(Answered(at=1000.0 + i, model="m", status=200, duration_s=0.5 + i,
                            worker=f"w{i}", hive="localhost", ttft_s=0.0456, tokens=i))  # fmt: skip
    assert ledger.total == 5
    recent = ledger.recent()
    assert [r["worker"] for r in recent] == ["w4", "w3", "w2"]
    assert recent[0] == {"at": 1004.0, "model": "m", "worker": "w4", "hive": "localhost",
                         "status": 200, "stream": False, "duration_ms": 4500, "ttft_ms": 46,
                         "tokens": 4}  # fmt: skip
    assert [r["worker"] for r in ledger.recent(1)] == ["w4"]
    assert ledger.recent(0) == []


def test_a_refusal_has_no_worker_and_no_tokens() -> None:
    ledger = Ledger()
    ledger.add(Answered(at=5.0, model="m", status=503, duration_s=0.001))
    (only,) = ledger.recent()
    assert (only["worker"], only["hive"], only["tokens"], only["ttft_ms"]) == ("", "", None, None)


@pytest.mark.parametrize(
    ("body", "tokens"),
    [
        (b'{"usage": {"prompt_tokens": 3, "completion_tokens": 7}}', 7),
        (b'{"usage": {"prompt_tokens": 3}}', None),  # embeddings
        (b'{"usage": null}', None),
        (b'{"usage": {"completion_tokens": -1}}', None),
        (b'{"usage": {"completion_tokens": "7"}}', None),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"", None),
    ],
)
def test_completion_tokens_of_a_whole_answer(body: bytes, tokens: int | None) -> None:
    assert completion_tokens(body) == tokens
