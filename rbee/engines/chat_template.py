"""Chat templates for the engines that render them themselves (MLX, ExLlamaV2).

Models ship their prompt format as a Jinja template (in a GGUF's metadata or a Hugging Face
folder's tokenizer_config.json). This renders it the way transformers' apply_chat_template does:
a sandboxed environment, trim_blocks/lstrip_blocks, loop controls, `raise_exception`,
`strftime_now`, a `tojson` that keeps non-ASCII text, and transformers' `{% generation %}` tag
passed through. llama.cpp renders its own (llama-cpp-python's Jinja2ChatFormatter).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from rbee.errors import EngineError

__all__ = ["ChatTemplate", "folder_template_source"]


class _Generation(jinja2.ext.Extension):
    # transformers' `{% generation %}…{% endgeneration %}` marks training spans; rendering keeps
    # what is inside.
    tags = {"generation"}  # noqa: RUF012 - jinja2's Extension declares it a class set

    def parse(self, parser: Any) -> Any:
        parser.stream.skip(1)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise jinja2.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().astimezone().strftime(fmt)


def _tojson(value: object, indent: int | None = None, **_: object) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


class ChatTemplate:
    """A model's Jinja chat template, compiled once."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str, where: str) -> None:
        """Compile `source`; EngineError naming `where` (the model) if it is not valid Jinja."""
        env = ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[_Generation, jinja2.ext.loopcontrols],
        )
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        env.filters["tojson"] = _tojson
        try:
            self._template = env.from_string(source)
        except jinja2.TemplateError as err:
            raise EngineError(f"{where}: the chat template is not valid Jinja: {err}") from err
        self.source = source
        self._bos = bos_token
        self._eos = eos_token

    def render(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> str:
        """The prompt for `messages` (and `tools`, for a template that renders them: see
        rbee.engines.tool_prompt), ending where the assistant's answer begins.

        Raises jinja2.TemplateError (or another exception from the template) when the template
        rejects the messages; callers answer that with a 400.
        """
        text: str = self._template.render(
            messages=messages,
            tools=tools,
            bos_token=self._bos,
            eos_token=self._eos,
            add_generation_prompt=True,
        )
        return text


def folder_template_source(folder: Path, tokenizer_config: dict[str, Any]) -> str | None:
    """A Hugging Face folder's chat template: tokenizer_config.json's (the "default" one when it
    names several), else a chat_template.jinja beside it; None when it has neither."""
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if isinstance(template, str) and template.strip():
        return template
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text()
        except OSError as err:
            raise EngineError(f"{jinja}: cannot read the chat template: {err}") from err
    return None
