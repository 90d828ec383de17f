"""The prompt format of a local model: how OpenAI messages become the text the model continues.

The format is, in order of precedence:

1. the config's ``chat_format`` (one of :data:`BUILTIN_FORMATS`);
2. the model's own Jinja template (GGUF ``tokenizer.chat_template``);
3. the format of the model's family, from GGUF ``general.architecture`` (gemma* -> ``gemma``,
   qwen* -> ``chatml``, phi3 -> ``phi3``, llama -> ``llama-3`` or ``llama-2`` by its vocabulary);
4. the format whose special tokens the vocabulary holds; else ``chatml``.

Without step 3, a GGUF lacking a template would be prompted in llama-2 style (llama-cpp-python's
fallback), which e.g. Gemma 3 answers with empty content.

Tool calls use the Hermes/Qwen convention in text: the tools are described in the system message
(unless the model's template renders ``tools`` itself) and the model answers a call with
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; :func:`parse_tool_calls` reads that
back. Templates are rendered in Jinja's sandbox, like Hugging Face's ``apply_chat_template``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Optional

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ...errors import bad_request
from ...ids import new_id
from ...openai.objects import TOOL_CALL_ID_PREFIX
from ...openai.schema import text_of
from ..base import BackendError

log = logging.getLogger("helios_raw.local")

_CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Gemma has no system role: the system text opens the first user turn, as Google's template does.
_GEMMA = (
    "{{ bos_token }}"
    "{% if messages and messages[0].role == 'system' %}"
    "{% set system = messages[0].content + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% if not turns %}{{ '<start_of_turn>user\\n' + system | trim + '<end_of_turn>\\n' }}{% endif %}"
    "{% for m in turns %}"
    "{{ '<start_of_turn>' + ('model' if m.role == 'assistant' else 'user') + '\\n'"
    " + (system if loop.first else '') + m.content | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
_LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
_LLAMA2 = (
    "{% if messages and messages[0].role == 'system' %}"
    "{% set system = '<<SYS>>\\n' + messages[0].content + '\\n<</SYS>>\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if m.role == 'assistant' %}{{ ' ' + m.content | trim + ' ' + eos_token }}"
    "{% else %}{{ bos_token + '[INST] ' + (system if loop.first else '') + m.content | trim + ' [/INST]' }}"
    "{% endif %}{% endfor %}"
)
_MISTRAL = (
    "{{ bos_token }}"
    "{% if messages and messages[0].role == 'system' %}"
    "{% set system = messages[0].content + '\\n\\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for m in turns %}{% if m.role == 'assistant' %}{{ m.content | trim + eos_token }}"
    "{% else %}{{ '[INST] ' + (system if loop.first else '') + m.content | trim + ' [/INST]' }}"
    "{% endif %}{% endfor %}"
)
_PHI3 = (
    "{% for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content + '<|end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
_ZEPHYR = (
    "{% for m in messages %}{{ '<|' + m.role + '|>\\n' + m.content + eos_token + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

#: Built-in formats: name -> (Jinja template, strings that end the assistant's turn).
BUILTIN_FORMATS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (_CHATML, ("<|im_end|>",)),
    "gemma": (_GEMMA, ("<end_of_turn>",)),
    "llama-3": (_LLAMA3, ("<|eot_id|>",)),
    "llama-2": (_LLAMA2, ("</s>",)),
    "mistral-instruct": (_MISTRAL, ("</s>",)),
    "phi3": (_PHI3, ("<|end|>",)),
    "zephyr": (_ZEPHYR, ("</s>",)),
}

#: GGUF ``general.architecture`` -> format. ``llama`` is decided by its vocabulary.
ARCHITECTURE_FORMATS = {
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "qwen": "chatml", "qwen2": "chatml", "qwen2moe": "chatml", "qwen3": "chatml", "qwen3moe": "chatml",
    "internlm2": "chatml", "stablelm": "chatml", "granite": "chatml", "olmo2": "chatml",
    "phi3": "phi3",
}

#: Special tokens that betray a format when the architecture doesn't (checked in this order).
_TOKEN_SIGNATURES = (
    ("llama-3", ("<|start_header_id|>", "<|eot_id|>")),
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("gemma", ("<start_of_turn>", "<end_of_turn>")),
    ("phi3", ("<|user|>", "<|end|>")),
)

_TOOL_INSTRUCTIONS = (
    "# Tools\n\nYou may call one or more functions to help with the user's request. "
    "The functions are described by these JSON signatures:\n<tools>\n{tools}\n</tools>\n\n"
    "To call a function, answer with only a JSON object naming it and giving its arguments, "
    "inside <tool_call></tool_call> tags:\n<tool_call>\n"
    "{{\"name\": <function-name>, \"arguments\": <arguments-as-a-json-object>}}\n</tool_call>"
)
TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"


@dataclass
class ChatFormat:
    """A prompt format: a Jinja template, the strings that end a turn, and why it was chosen."""

    name: str
    reason: str
    template: str
    stop: tuple[str, ...]
    bos_token: str = ""
    eos_token: str = ""

    def __post_init__(self) -> None:
        self._compiled = _environment().from_string(self.template)
        # What the template renders itself; everything else is mapped onto plain turns.
        self.renders_tools = "tools" in self.template
        self.renders_tool_calls = "tool_calls" in self.template
        self.renders_tool_role = "'tool'" in self.template or '"tool"' in self.template

    def describe(self) -> str:
        return f"{self.name} ({self.reason})"

    def render(self, messages: list[dict], tools: Optional[list[dict]] = None) -> str:
        """The prompt for ``messages`` (validated OpenAI messages) ending where the assistant
        speaks. ``tools`` are the request's tools when the model may call them. Raises a 400
        APIError when a message can't be given to a text model or the template refuses them."""
        turns = self._turns(messages, tools)
        try:
            return self._compiled.render(
                messages=turns,
                tools=[t for t in tools] if tools and self.renders_tools else None,
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                raise_exception=_raise_template_error,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
            )
        except _TemplateRefusal as exc:
            raise bad_request(f"The model's chat template refused these messages: {exc}", "messages") from None
        except jinja2.TemplateError as exc:
            raise bad_request(f"The model's chat template failed on these messages: {exc}.", "messages") from None

    def _turns(self, messages: list[dict], tools: Optional[list[dict]]) -> list[dict]:
        turns = []
        for i, message in enumerate(messages):
            _refuse_non_text(message, i)
            role = message["role"]
            content = text_of(message.get("content"))
            turn: dict = {"role": role, "content": content}
            if role == "developer":
                turn["role"] = "system"
            elif role in ("tool", "function"):
                if self.renders_tool_role:
                    turn["role"] = "tool"
                    turn["tool_call_id"] = message.get("tool_call_id", "")
                else:
                    turn = {"role": "user", "content": f"<tool_response>\n{content}\n</tool_response>"}
            elif role == "assistant" and message.get("tool_calls"):
                if self.renders_tool_calls:
                    turn["tool_calls"] = [_template_tool_call(c) for c in message["tool_calls"]]
                else:
                    calls = "\n".join(_tool_call_text(c) for c in message["tool_calls"])
                    turn["content"] = f"{content}\n{calls}" if content else calls
            if "name" in message and role not in ("tool", "function"):
                turn["name"] = message["name"]
            turns.append(turn)
        if tools and not self.renders_tools:
            instructions = _TOOL_INSTRUCTIONS.format(
                tools="\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools))
            if turns and turns[0]["role"] == "system":
                turns[0] = {**turns[0], "content": f"{turns[0]['content']}\n\n{instructions}"}
            else:
                turns.insert(0, {"role": "system", "content": instructions})
        return turns


def builtin_format(name: str, reason: str, bos_token: str = "", eos_token: str = "") -> ChatFormat:
    template, stop = BUILTIN_FORMATS[name]
    return ChatFormat(name, reason, template, stop, bos_token, eos_token)


def choose_chat_format(
    metadata: dict,
    override: Optional[str],
    vocab_has: Callable[[str], bool],
    bos_token: str = "",
    eos_token: str = "",
) -> ChatFormat:
    """The format for a model with GGUF ``metadata``; ``vocab_has(text)`` tells whether ``text``
    is one special token of its vocabulary. Raises ``BackendError`` for an unknown override."""
    if override:
        if override not in BUILTIN_FORMATS:
            raise BackendError(
                f"Unknown chat_format {override!r}; use one of {', '.join(BUILTIN_FORMATS)} "
                "or leave it unset to use the model's own template.")
        return builtin_format(override, "set in the configuration", bos_token, eos_token)

    template = metadata.get("tokenizer.chat_template")
    if template:
        try:
            return ChatFormat("template", "the model's own chat template", template,
                              (eos_token,) if eos_token else (), bos_token, eos_token)
        except jinja2.TemplateError as exc:
            log.warning("the model's chat template does not compile (%s); choosing a format by architecture", exc)

    architecture = metadata.get("general.architecture", "")
    name = ARCHITECTURE_FORMATS.get(architecture)
    if name is None and architecture == "llama":
        name = "llama-3" if vocab_has("<|eot_id|>") else "chatml" if vocab_has("<|im_start|>") else "llama-2"
    if name is not None:
        return builtin_format(name, f"no chat template; chosen from architecture {architecture!r}", bos_token, eos_token)
    for candidate, tokens in _TOKEN_SIGNATURES:
        if all(vocab_has(t) for t in tokens):
            return builtin_format(candidate, f"no chat template; architecture {architecture!r} is unknown, "
                                  f"the vocabulary has {tokens[0]}", bos_token, eos_token)
    return builtin_format("chatml", f"no chat template and architecture {architecture!r} is unknown; "
                          "set chat_format if the answers look wrong", bos_token, eos_token)


def parse_tool_calls(text: str, names: set[str]) -> Optional[list[dict]]:
    """The OpenAI ``tool_calls`` that ``text`` consists of, or None if it is ordinary content.

    ``text`` must be only tool calls: ``<tool_call>{...}</tool_call>`` blocks (the last one may
    be unclosed), or one bare JSON object, each ``{"name": <one of names>, "arguments": {...}}``.
    """
    stripped = text.strip()
    if stripped.startswith(TOOL_CALL_OPEN):
        bodies = []
        rest = stripped
        while rest.startswith(TOOL_CALL_OPEN):
            body, closed, rest = rest[len(TOOL_CALL_OPEN):].partition(TOOL_CALL_CLOSE)
            bodies.append(body)
            rest = rest.strip()
            if not closed:
                break
        if rest:
            return None
    elif stripped.startswith("{"):
        bodies = [stripped]
    else:
        return None
    calls = []
    for body in bodies:
        call = _one_tool_call(body, names)
        if call is None:
            return None
        calls.append(call)
    return calls


def could_be_tool_call(text: str) -> bool:
    """Whether ``text``, the start of an answer, may still turn out to be a tool call."""
    stripped = text.lstrip()
    return not stripped or stripped.startswith("{") or stripped.startswith(TOOL_CALL_OPEN) or \
        TOOL_CALL_OPEN.startswith(stripped)


# -- helpers -------------------------------------------------------------------------------------


class _TemplateRefusal(Exception):
    pass


def _raise_template_error(message: str) -> None:
    raise _TemplateRefusal(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    return env


def _refuse_non_text(message: dict, index: int) -> None:
    content = message.get("content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if part.get("type") not in ("text", "refusal"):
                raise bad_request(
                    f"'messages[{index}].content[{j}]' is a content part of type {part.get('type')!r}, but "
                    "this model reads text only.", f"messages[{index}].content[{j}].type", "unsupported_content")


def _arguments(call: dict):
    raw = call["function"].get("arguments", "")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return raw


def _tool_call_text(call: dict) -> str:
    body = json.dumps({"name": call["function"]["name"], "arguments": _arguments(call)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}\n{body}\n{TOOL_CALL_CLOSE}"


def _template_tool_call(call: dict) -> dict:
    function = {"name": call["function"]["name"], "arguments": _arguments(call)}
    return {"id": call.get("id", ""), "type": "function", "function": function}


def _one_tool_call(body: str, names: set[str]) -> Optional[dict]:
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("name") not in names:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {
        "id": new_id(TOOL_CALL_ID_PREFIX),
        "type": "function",
        "function": {"name": data["name"], "arguments": json.dumps(arguments, ensure_ascii=False)},
    }
