"""Chat templates rendered as transformers renders them (MLX and ExLlamaV2 use these)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import pytest

from rbee.engines.chat_template import ChatTemplate, folder_template_source
from rbee.errors import EngineError

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_renders_messages_and_the_generation_prompt() -> None:
    template = ChatTemplate(CHATML, bos_token="<s>", eos_token="</s>", where="m")
    text = template.render([{"role": "user", "content": "Hi"}])
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert template.source == CHATML


def test_transformers_extras() -> None:
    source = (
        "{{ bos_token }}{% for m in messages %}{% generation %}{{ m.content | tojson }}"
        "{% endgeneration %}{% if loop.index > 0 %}{% break %}{% endif %}{% endfor %}"
        "{{ strftime_now('%Y') | length }}{{ eos_token }}"
    )
    text = ChatTemplate(source, bos_token="<s>", eos_token="</s>", where="m").render(
        [{"role": "user", "content": "café"}, {"role": "user", "content": "never"}]
    )
    assert text == '<s>"café"4</s>'


def test_raise_exception_and_bad_jinja() -> None:
    strict = ChatTemplate(
        "{% if messages[0].role != 'user' %}{{ raise_exception('user first') }}{% endif %}ok",
        bos_token="",
        eos_token="",
        where="m",
    )
    assert strict.render([{"role": "user", "content": ""}]) == "ok"
    with pytest.raises(jinja2.TemplateError, match="user first"):
        strict.render([{"role": "assistant", "content": ""}])
    with pytest.raises(EngineError, match=r"my-model: the chat template is not valid Jinja"):
        ChatTemplate("{% for %}", bos_token="", eos_token="", where="my-model")


def test_sandbox_blocks_attribute_escapes() -> None:
    evil = ChatTemplate("{{ messages.__class__.__mro__ }}", bos_token="", eos_token="", where="m")
    with pytest.raises(jinja2.exceptions.SecurityError):
        evil.render([])


def test_folder_source_order(tmp_path: Path) -> None:
    assert folder_template_source(tmp_path, {}) is None
    (tmp_path / "chat_template.jinja").write_text("from file")
    assert folder_template_source(tmp_path, {}) == "from file"
    assert folder_template_source(tmp_path, {"chat_template": "from config"}) == "from config"
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "chat"}]
    assert folder_template_source(tmp_path, {"chat_template": named}) == "chat"
