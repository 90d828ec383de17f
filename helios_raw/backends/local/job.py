"""One chat request made ready for the model: its prompt's tokens, its limits, how to sample.

:func:`make_job` runs off the event loop (it renders and tokenises the prompt and may build a
grammar); it validates what only the model can judge. :func:`sampler_chain` builds the request's
own llama.cpp sampler chain, in llama-cpp-python's order, so a given seed gives the text
``Llama.generate`` would.

Sampling when the request leaves a value out: ``temperature`` and ``max_tokens`` from
:class:`~helios_raw.config.LocalConfig`; ``top_k`` 40, ``top_p`` 0.95, ``min_p`` 0.05 (llama.cpp's
usual chat defaults); ``repeat_penalty`` 1.0 (off), ``presence_penalty`` and ``frequency_penalty``
0; ``seed`` from the config, else random per request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from ...config import LocalConfig
from ...errors import bad_request
from ...openai.schema import ChatRequest
from .grammars import json_object_grammar, json_schema_grammar, tool_call_grammar

if TYPE_CHECKING:  # pragma: no cover
    from .model import LoadedModel

DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.0
#: Tokens the repetition penalties look back over (llama-cpp-python's ``last_n_tokens_size``).
PENALTY_LAST_N = 64


@dataclass
class Job:
    """What the engine needs to generate one answer."""

    prompt: list[int]
    max_new_tokens: int
    stop: list[str]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    seed: int
    logit_bias: dict[int, float] = field(default_factory=dict)
    grammar: Optional[str] = None
    #: None: no logprobs; else how many alternatives per token.
    top_logprobs: Optional[int] = None
    #: None; "auto" (a tool call is recognised in the text) or "forced" (a grammar makes one).
    tool_mode: Optional[str] = None
    tool_names: frozenset = frozenset()
    #: The stop strings the client asked for (``stop`` adds the chat format's own).
    client_stops: tuple = ()


def sampled_job(config: LocalConfig, model: "LoadedModel", request) -> Job:
    """A job with ``request``'s sampling settings (a chat or a text completion request; the
    defaults where it leaves them out), its prompt and length still to be set."""
    job = Job(
        prompt=[], max_new_tokens=0, stop=list(request.stop), client_stops=tuple(request.stop),
        temperature=config.temperature if request.temperature is None else request.temperature,
        top_p=DEFAULT_TOP_P if request.top_p is None else request.top_p,
        top_k=DEFAULT_TOP_K if request.top_k is None else request.top_k,
        min_p=DEFAULT_MIN_P if request.min_p is None else request.min_p,
        repeat_penalty=DEFAULT_REPEAT_PENALTY if request.repeat_penalty is None else request.repeat_penalty,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        seed=(request.seed if request.seed is not None else config.seed if config.seed is not None
              else random.getrandbits(32)) & 0xFFFFFFFF,
    )
    if request.logit_bias:
        bad = [t for t in request.logit_bias if not 0 <= t < model.n_vocab]
        if bad:
            raise bad_request(f"'logit_bias' names token {bad[0]}, but the model's vocabulary has tokens "
                              f"0 to {model.n_vocab - 1}.", "logit_bias")
        job.logit_bias = dict(request.logit_bias)
    return job


def make_job(config: LocalConfig, model: "LoadedModel", chat: ChatRequest) -> Job:
    """Validate what only the model can judge, render and tokenise the prompt. Raises a 400
    ``APIError`` naming the parameter at fault."""
    tools = chat.tools if chat.tools and chat.tool_choice != "none" else None
    job = sampled_job(config, model, chat)
    job.top_logprobs = (chat.top_logprobs or 0) if chat.logprobs else None
    if tools:
        job.tool_names = frozenset(t["function"]["name"] for t in tools)
        choice = chat.tool_choice or "auto"
        if choice == "auto":
            job.tool_mode = "auto"
        else:
            job.tool_mode = "forced"
            job.grammar = tool_call_grammar(tools, None if choice == "required" else choice["function"]["name"])
    response_format = chat.response_format or {"type": "text"}
    if job.grammar is None and response_format["type"] == "json_object":
        job.grammar = json_object_grammar()
    elif job.grammar is None and response_format["type"] == "json_schema":
        job.grammar = json_schema_grammar(response_format["json_schema"].get("schema") or {"type": "object"})
    job.prompt = model.prompt_tokens(chat.messages, tools)
    room = model.n_ctx - len(job.prompt)
    if room <= 0:
        raise bad_request(
            f"The messages take {len(job.prompt)} tokens, but the model's context holds {model.n_ctx}; "
            "shorten them.", "messages", "context_length_exceeded")
    if chat.max_tokens is not None and chat.max_tokens > room:
        raise bad_request(
            f"This model's context holds {model.n_ctx} tokens; the messages take {len(job.prompt)}, which "
            f"leaves room for {room} new tokens, not the {chat.max_tokens} asked for. Lower max_tokens or "
            "shorten the messages.", "max_tokens", "context_length_exceeded")
    job.max_new_tokens = min(chat.max_tokens or config.max_tokens, room)
    job.stop.extend(s for s in model.text_stops if s not in job.stop)
    return job


def sampler_chain(lc, model: "LoadedModel", job: Job):
    """A new llama.cpp sampler chain for ``job`` (the caller frees it with ``llama_sampler_free``).
    Raises a 400 if llama.cpp refuses the grammar."""
    chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
    try:
        def add(sampler) -> None:
            lc.llama_sampler_chain_add(chain, sampler)

        if job.logit_bias:
            biases = (lc.llama_logit_bias * len(job.logit_bias))()
            for i, (token, bias) in enumerate(job.logit_bias.items()):
                biases[i].token, biases[i].bias = token, bias
            add(lc.llama_sampler_init_logit_bias(model.n_vocab, len(job.logit_bias), biases))
        if job.repeat_penalty != 1.0 or job.presence_penalty or job.frequency_penalty:
            add(lc.llama_sampler_init_penalties(model.n_vocab, PENALTY_LAST_N, job.repeat_penalty,
                                                job.frequency_penalty, job.presence_penalty))
        if job.grammar:
            grammar = lc.llama_sampler_init_grammar(model.vocab, job.grammar.encode("utf-8"), b"root")
            if not grammar:
                raise bad_request("llama.cpp could not parse the grammar built for this request.",
                                  "response_format", "unsupported_schema")
            add(grammar)
        if job.temperature <= 0.0:
            add(lc.llama_sampler_init_greedy())
        else:
            add(lc.llama_sampler_init_top_k(job.top_k))
            add(lc.llama_sampler_init_top_p(job.top_p, 1))
            add(lc.llama_sampler_init_min_p(job.min_p, 1))
            add(lc.llama_sampler_init_temp(job.temperature))
            add(lc.llama_sampler_init_dist(job.seed))
    except BaseException:
        lc.llama_sampler_free(chain)
        raise
    return chain
