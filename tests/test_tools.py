"""Tools on chat completions, without a model: parsing (tables of what is accepted and what is
refused, naming the field), the call grammar walked token by token on a tiny real tokenizer
(tests/bytetok.py) with llguidance itself, the parser that turns answers back into `tool_calls`,
and how tools and the history's calls reach chat templates with and without a tools section."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np
import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from rbee.api.openai import (
    ChatRequest,
    parse_chat_request,
    parse_completion_request,
    parse_off_loop,
)
from rbee.api.tools import MAX_TOOLS, CallParser, split_calls
from rbee.engines.chat_template import ChatTemplate
from rbee.engines.grammar import Constraint, Grammar, compile_grammar, tokenizer_from_json
from rbee.engines.tool_prompt import SYSTEM_TOOLS, supports_tools, template_inputs
from rbee.errors import ApiError
from tests.bytetok import FIRST_BYTE, byte_tokens, tokenizer_json

WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CLOCK: dict[str, Any] = {"type": "function", "function": {"name": "clock"}}
BASE: dict[str, Any] = {
    "model": "m",
    "messages": [{"role": "user", "content": "Weather in Paris?"}],
    "tools": [WEATHER, CLOCK],
}
CALL = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n'
    "</tool_call>"
)
CLOCK_CALL = '<tool_call>\n{"name": "clock", "arguments": {}}\n</tool_call>'
N_VOCAB = FIRST_BYTE + 256
EOS = 7


def parse(**change: Any) -> ChatRequest:
    return parse_chat_request({**BASE, **change})


# ---- parsing ---------------------------------------------------------------------------------


def test_tools_default_to_auto_and_parallel_calls() -> None:
    spec = parse().tools
    assert spec is not None
    assert (spec.choice, spec.function, spec.parallel) == ("auto", None, True)
    assert [t.name for t in spec.tools] == ["get_weather", "clock"]
    assert spec.grammar is not None
    assert parse().calls_tools
    weather, clock = spec.tools
    assert weather.as_openai() == WEATHER
    # A function without parameters takes none: an empty object, nothing else.
    assert json.loads(clock.parameters) == {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }


@pytest.mark.parametrize(
    ("choice", "kind", "function"),
    [
        ("none", "none", None),
        ("auto", "auto", None),
        ("required", "required", None),
        ({"type": "function", "function": {"name": "clock"}}, "function", "clock"),
    ],
)
def test_tool_choice(choice: Any, kind: str, function: str | None) -> None:
    spec = parse(tool_choice=choice).tools
    assert spec is not None
    assert (spec.choice, spec.function) == (kind, function)
    # "none" leaves the answer free: no grammar, and the answer is not parsed for calls.
    assert (spec.grammar is None) == (kind == "none")
    assert parse(tool_choice=choice).calls_tools == (kind != "none")


def test_parallel_calls_can_be_turned_off_and_a_named_function_is_one_call() -> None:
    spec = parse(parallel_tool_calls=False).tools
    assert spec is not None
    assert not spec.parallel
    named = parse(tool_choice={"type": "function", "function": {"name": "clock"}}).tools
    assert named is not None
    assert not named.parallel


def test_history_carries_calls_and_results() -> None:
    request = parse(
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        ]
    )
    assistant, tool = request.messages[1:]
    assert assistant.content == ""
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("call_1", "get_weather", '{"city": "Paris"}')
    ]
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "18 C, sunny")


def refused(body: dict[str, Any]) -> ApiError:
    with pytest.raises(ApiError) as caught:
        parse_chat_request(body)
    assert caught.value.status == 400
    assert caught.value.body()["error"]["param"] == caught.value.param
    return caught.value


def tool(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "f", **function}}


@pytest.mark.parametrize(
    ("change", "param", "words"),
    [
        ({"tools": {"f": 1}}, "tools", "must be a list"),
        ({"tools": [tool()] * (MAX_TOOLS + 1)}, "tools", "at most 128"),
        ({"tools": ["f"]}, "tools[0]", "must be an object"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", 'must be "function"'),
        ({"tools": [{"type": "function"}]}, "tools[0].function", "must be an object"),
        ({"tools": [tool(name="a b")]}, "tools[0].function.name", "letters, digits"),
        ({"tools": [tool(name="x" * 65)]}, "tools[0].function.name", "1 to 64"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name", "required"),
        ({"tools": [tool(), tool()]}, "tools[1].function.name", "two tools are named 'f'"),
        ({"tools": [tool(description=5)]}, "tools[0].function.description", "a string"),
        ({"tools": [tool(strict="yes")]}, "tools[0].function.strict", "a boolean"),
        ({"tools": [tool(parameters=[])]}, "tools[0].function.parameters", "JSON Schema"),
        (
            {"tools": [tool(parameters={"type": "array"})]},
            "tools[0].function.parameters.type",
            "must describe an object",
        ),
        (
            {"tools": [tool(parameters={"type": "object", "properties": {"x": {"not": {}}}})]},
            "tools[0].function.parameters.properties.x.not",
            "cannot enforce",
        ),
        (
            {"tools": [tool(parameters={"properties": {"d": {"format": "color"}}})]},
            "tools[0].function.parameters.properties.d.format",
            "cannot enforce the format",
        ),
        ({"tools": [tool()], "tool_choice": "any"}, "tool_choice", '"auto", "none"'),
        ({"tools": [tool()], "tool_choice": {"type": "function"}}, "tool_choice", "must be"),
        (
            {"tools": [tool()], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice.function.name",
            "not among tools (f)",
        ),
        ({"tools": [tool()], "parallel_tool_calls": "no"}, "parallel_tool_calls", "boolean"),
        ({"tools": None, "tool_choice": "auto"}, "tool_choice", "only allowed when tools"),
        ({"tools": [], "parallel_tool_calls": True}, "parallel_tool_calls", "only allowed"),
        ({"functions": [{"name": "f"}]}, "functions", "deprecated form of tools"),
        ({"function_call": "auto"}, "function_call", "deprecated form of tools"),
        (
            {"messages": [{"role": "tool", "content": "18 C"}]},
            "messages[0].tool_call_id",
            "needs the tool_call_id",
        ),
        (
            {"messages": [{"role": "tool", "content": "18 C", "tool_call_id": 3}]},
            "messages[0].tool_call_id",
            "needs the tool_call_id",
        ),
        (
            {"messages": [{"role": "user", "content": "hi", "tool_calls": []}]},
            "messages[0].tool_calls",
            "only assistant messages",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": {"id": "x"}}]},
            "messages[0].tool_calls",
            "must be a list",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {}}]}]},
            "messages[0].tool_calls[0].function.name",
            "required",
        ),
        (
            {
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": "c", "function": {"name": "f", "arguments": {"a": 1}}}
                        ],
                    }
                ]
            },
            "messages[0].tool_calls[0].function.arguments",
            "must be a string",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
            "messages[0].tool_calls[0].id",
            "required",
        ),
    ],
)
def test_bad_tools_name_the_field(change: dict[str, Any], param: str, words: str) -> None:
    error = refused({**BASE, **change})
    assert error.param == param
    assert words in error.message


@pytest.mark.parametrize("key", ["tools", "tool_choice", "functions"])
def test_completions_refuse_tools(key: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_completion_request({"model": "m", "prompt": "a", key: "auto"})
    assert caught.value.param == key
    assert "/v1/chat/completions" in caught.value.message


# ---- the call grammar on a real tokenizer, without a model -----------------------------------


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return tokenizer_from_json(tokenizer_json(), n_vocab=N_VOCAB, eos=(EOS,))


def bound(tokenizer: Any, **change: Any) -> Grammar:
    spec = parse(**change).tools
    assert spec is not None
    assert spec.grammar is not None
    return compile_grammar(tokenizer, spec.grammar, what="these tools", param="tools")


def walk(constraint: Constraint, text: str) -> None:
    """Feed `text` byte by byte, checking each byte was allowed before it was fed."""
    for token in byte_tokens(text):
        assert constraint.allowed(N_VOCAB)[token], (text, token)
        constraint.feed(token)


def refuses(constraint: Constraint, text: str) -> bool:
    """True when some byte of `text` is not allowed where it comes."""
    for token in byte_tokens(text):
        if not constraint.allowed(N_VOCAB)[token]:
            return True
        constraint.feed(token)
    return False


def may_end(constraint: Constraint) -> bool:
    return bool(constraint.allowed(N_VOCAB)[EOS]) or constraint.done


def test_required_is_a_valid_call_and_nothing_else(tokenizer: Any) -> None:
    grammar = bound(tokenizer, tool_choice="required")
    constraint = grammar.start()
    walk(constraint, CALL)
    assert may_end(constraint)
    assert refuses(grammar.start(), "Sure")
    assert refuses(grammar.start(), '<tool_call>\n{"name": "get_time"')
    # Arguments hold to the function's schema: a key it does not have, a value out of its enum.
    assert refuses(grammar.start(), '<tool_call>\n{"name": "get_weather", "arguments": {"town"')
    bad_unit = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "P", "unit": "k'
    assert refuses(grammar.start(), bad_unit)
    # ...and every required argument must come before the object closes.
    assert refuses(grammar.start(), '<tool_call>\n{"name": "get_weather", "arguments": {}')


def test_parallel_calls_follow_one_another_unless_turned_off(tokenizer: Any) -> None:
    parallel = bound(tokenizer, tool_choice="required").start()
    walk(parallel, CALL + "\n" + CLOCK_CALL)
    assert may_end(parallel)
    single = bound(tokenizer, tool_choice="required", parallel_tool_calls=False).start()
    walk(single, CALL)
    assert single.done  # nothing more may follow: the engine ends the answer there


def test_a_named_function_is_the_only_call(tokenizer: Any) -> None:
    grammar = bound(tokenizer, tool_choice={"type": "function", "function": {"name": "clock"}})
    constraint = grammar.start()
    walk(constraint, CLOCK_CALL)
    assert constraint.done
    assert refuses(grammar.start(), '<tool_call>\n{"name": "get_weather"')
    # A function declared without parameters takes none.
    assert refuses(grammar.start(), '<tool_call>\n{"name": "clock", "arguments": {"k')


def test_auto_is_free_text_until_a_call_begins(tokenizer: Any) -> None:
    grammar = bound(tokenizer)
    text = grammar.start()
    walk(text, "It is sunny in Paris, <b>nice</b>.\n")
    assert may_end(text)
    call = grammar.start()
    walk(call, "Let me look. " + CALL)
    assert may_end(call)
    # Once `<tool_call>` is written, the rest is held to a call.
    assert refuses(grammar.start(), "Let me look. <tool_call>\nthe weather")
    assert refuses(grammar.start(), 'Let me look. <tool_call>\n{"name": "nope"')


def test_auto_with_a_response_format_is_that_answer_or_calls(tokenizer: Any) -> None:
    grammar = bound(tokenizer, response_format={"type": "json_object"})
    answer = grammar.start()
    walk(answer, '{"weather": "sunny"}')
    assert may_end(answer)
    walk(grammar.start(), CALL)
    assert refuses(grammar.start(), "It is sunny")


def test_masks_never_allow_ids_beyond_the_vocabulary(tokenizer: Any) -> None:
    constraint = bound(tokenizer, tool_choice="required").start()
    mask = constraint.allowed(N_VOCAB + 50)
    assert not np.any(mask[N_VOCAB:])


# ---- answers back into tool_calls ------------------------------------------------------------


def test_a_whole_answer_splits_into_text_and_calls() -> None:
    content, calls = split_calls("Let me look. " + CALL + "\n" + CLOCK_CALL)
    assert content == "Let me look. "
    assert [(c["type"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("function", "get_weather", '{"city": "Paris", "unit": "c"}'),
        ("function", "clock", "{}"),
    ]
    assert all(c["id"].startswith("call_") for c in calls)
    assert len({c["id"] for c in calls}) == 2


@pytest.mark.parametrize(
    "text", ["", "plain text", "a <tool> b", "<tool_cal", "x < y and y > z", "<tool_call"]
)
def test_text_without_calls_is_kept_whole(text: str) -> None:
    assert split_calls(text) == (text, [])


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_streamed_pieces_give_the_same_calls_as_the_whole(size: int) -> None:
    answer = "Hm. " + CALL + "\n" + CLOCK_CALL
    parser = CallParser()
    events = []
    for at in range(0, len(answer), size):
        events += parser.feed(answer[at : at + size])
    events += parser.end()
    assert "".join(e.text for e in events if e.kind == "text") == "Hm. "
    starts = [e for e in events if e.kind == "call"]
    assert [(e.index, e.name) for e in starts] == [(0, "get_weather"), (1, "clock")]
    arguments = ["", ""]
    for e in events:
        if e.kind == "arguments":
            arguments[e.index] += e.text
    assert arguments == ['{"city": "Paris", "unit": "c"}', "{}"]
    if size == 1:
        # Arguments stream as they come, not in one piece at the end.
        assert len([e for e in events if e.kind == "arguments" and e.index == 0]) > 5
    # A call's start comes before any of its arguments.
    kinds = [(e.kind, e.index) for e in events if e.kind != "text"]
    assert kinds.index(("call", 1)) > max(i for i, k in enumerate(kinds) if k == ("arguments", 0))


def test_an_answer_cut_short_keeps_what_it_has() -> None:
    content, calls = split_calls('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert content == ""
    assert calls[0]["function"]["arguments"] == '{"city": "Pa'
    assert split_calls('Sure. <tool_call>\n{"na') == ('Sure. <tool_call>\n{"na', [])


# ---- tools in chat templates -----------------------------------------------------------------

# A template in the style of those with a tools section (Qwen 2.5, Hermes): tools as JSON lines
# in the system turn, calls as <tool_call> blocks, results as <tool_response> in a user turn.
TOOLS_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}{% else %}Be helpful.{% endif %}
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>
Call functions as <tool_call>{"name": ..., "arguments": ...}</tool_call><|im_end|>
{% endif %}
{%- for m in messages %}
{%- if m.role == 'tool' %}<|im_start|>user
<tool_response name="{{ m.name }}">
{{ m.content }}
</tool_response><|im_end|>
{% elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{%- for c in m.tool_calls %}
<tool_call>
{{ {"name": c.function.name, "arguments": c.function.arguments} | tojson }}
</tool_call>
{%- endfor %}<|im_end|>
{% elif not (m.role == 'system' and tools) %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}
{%- endfor %}<|im_start|>assistant
"""
# The default model's kind: no tools section at all.
PLAIN_TEMPLATE = """\
{%- for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}<|im_start|>assistant
"""
HISTORY: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"id": "c2", "function": {"name": "clock", "arguments": "{}"}},
        ],
    },
    {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "c2", "content": "noon"},
]


def render_both(source: str, request: ChatRequest) -> list[str]:
    """The prompt as the MLX/ExLlamaV2 renderer and llama.cpp's formatter each write it."""
    messages, tools = template_inputs(request, source)
    ours = ChatTemplate(source, bos_token="", eos_token="", where="test").render(messages, tools)
    formatter = Jinja2ChatFormatter(template=source, eos_token="", bos_token="")
    theirs = formatter(messages=messages, tools=tools).prompt
    return [ours, theirs]


def test_which_templates_render_tools_themselves() -> None:
    assert supports_tools(TOOLS_TEMPLATE)
    assert not supports_tools(PLAIN_TEMPLATE)
    assert not supports_tools(None)


def test_a_template_with_a_tools_section_renders_tools_and_calls_itself() -> None:
    for prompt in render_both(TOOLS_TEMPLATE, parse(messages=HISTORY)):
        assert json.dumps(WEATHER) in prompt
        assert "You are terse." in prompt
        # Calls reach the template with their arguments as objects, as transformers passes them.
        assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in prompt
        # Results carry the name of the function they answer.
        assert '<tool_response name="clock">\nnoon\n</tool_response>' in prompt
        assert "# Tools" not in prompt  # rbee's own rendering is not added


def test_a_template_without_one_gets_rbees_rendering() -> None:
    for prompt in render_both(PLAIN_TEMPLATE, parse(messages=HISTORY)):
        system = prompt.split("<|im_end|>")[0]
        assert system.startswith("<|im_start|>system\nYou are terse.\n\n# Tools")
        assert json.dumps(WEATHER) in system
        clock = {"name": "clock", "parameters": json.loads(parse().tools.tools[1].parameters)}
        assert json.dumps(CLOCK | {"function": clock}) in system
        assert (
            "<|im_start|>assistant\n"
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "clock", "arguments": {}}\n</tool_call><|im_end|>'
        ) in prompt
        # Consecutive results are one user turn.
        assert (
            "<|im_start|>user\n<tool_response>\n18 C\n</tool_response>\n"
            "<tool_response>\nnoon\n</tool_response><|im_end|>"
        ) in prompt


@pytest.mark.parametrize(
    ("choice", "sentence"),
    [
        ("required", "Answer with at least one function call."),
        ({"type": "function", "function": {"name": "clock"}}, "Call the function clock now."),
    ],
)
def test_rbees_rendering_says_when_a_call_is_required(choice: Any, sentence: str) -> None:
    messages, tools = template_inputs(parse(tool_choice=choice), PLAIN_TEMPLATE)
    assert tools is None
    assert messages[0]["role"] == "system"  # added: the conversation had none
    assert messages[0]["content"].endswith(sentence)
    auto, _ = template_inputs(parse(), PLAIN_TEMPLATE)
    assert auto[0]["content"].endswith("</tool_call>")
    assert auto[0]["content"].startswith(SYSTEM_TOOLS.split("{tools}")[0])


def test_tool_choice_none_leaves_the_tools_out_but_keeps_the_history() -> None:
    request = parse(messages=HISTORY, tool_choice="none")
    messages, tools = template_inputs(request, TOOLS_TEMPLATE)
    assert tools is None
    assert messages[2]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    plain, _ = template_inputs(request, PLAIN_TEMPLATE)
    assert plain[0] == {"role": "system", "content": "You are terse."}
    assert "<tool_call>" in plain[2]["content"]


def test_requests_without_tools_render_as_before() -> None:
    request = parse_chat_request({"model": "m", "messages": BASE["messages"]})
    assert template_inputs(request, TOOLS_TEMPLATE) == (
        [{"role": "user", "content": "Weather in Paris?"}],
        None,
    )


# ---- where requests are parsed ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "off_loop"),
    [
        (BASE, True),
        ({**BASE, "tools": None, "response_format": {"type": "json_object"}}, True),
        ({"model": "m", "messages": BASE["messages"]}, False),
        (["not", "an", "object"], False),
    ],
)
async def test_bodies_with_grammars_are_parsed_off_the_event_loop(
    body: Any, off_loop: bool
) -> None:
    threads: list[int] = []

    def parse(value: Any) -> Any:
        threads.append(threading.get_ident())
        return value

    assert await parse_off_loop(parse, body) is body
    assert (threads[0] != threading.get_ident()) == off_loop
