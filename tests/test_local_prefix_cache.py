"""The local backend keeps each slot's cache between requests, sends a request to the free slot
sharing the longest prefix with its prompt, and evaluates only what the prompt does not share
with it (at least its last token, unless the slot holds exactly the prompt and the logits of its
last token are kept: it is then sampled from them). None of this may show: every answer must equal a fresh
server's answer to the same request, whatever was asked before it and whichever slot it lands in.

The sequence below walks through the cases of that reuse on one server: the same prompt again,
a prompt that is a strict prefix of a cache (the cache holds an earlier answer too), a different
prompt sharing a prefix and then the first one again, samplers that must still act on a reused
prefix (a logit bias, a grammar, a seeded temperature, logprobs), a stream, and a conversation
that continues an earlier answer. Each answer is then compared with the answer of a server that
has served nothing before; only ``cached_tokens`` may differ."""

from __future__ import annotations

import math

from tests.conftest import (
    chat_body,
    completion_of,
    local_server,
    stream_of,
    streamed_text,
)

KEEPER = "the lighthouse keeper found a bottle"
SHARED_PREFIX = "the lighthouse keeper lost"


def continuation(answer: str) -> dict:
    """A conversation that goes on from ``answer`` to the KEEPER prompt."""
    return chat_body(max_tokens=4, messages=[{"role": "user", "content": KEEPER},
                                             {"role": "assistant", "content": answer},
                                             {"role": "user", "content": "and then?"}])


SEQUENCE = [
    chat_body(KEEPER, max_tokens=1),
    chat_body(KEEPER, max_tokens=1),  # the prompt equals the context: sampled from kept logits
    chat_body(KEEPER, max_tokens=6),  # kept logits, then five tokens decoded after the prompt
    chat_body(KEEPER, max_tokens=1),  # the context holds the prompt and more: its last token is redone
    chat_body(SHARED_PREFIX, max_tokens=3),
    chat_body(KEEPER, max_tokens=1),
    chat_body(KEEPER, max_tokens=1, logit_bias={"90": 100}),  # "Z" must win over kept logits
    chat_body(KEEPER, max_tokens=5, response_format={"type": "json_object"}),
    chat_body(KEEPER, max_tokens=1),
    chat_body(KEEPER, max_tokens=5, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=11),
    chat_body(KEEPER, max_tokens=1),
    chat_body(KEEPER, max_tokens=2, logprobs=True, top_logprobs=3),
    chat_body(KEEPER, max_tokens=3, stream=True),
    chat_body(KEEPER, max_tokens=1, stream=True),
]


def answer(port: int, body: dict) -> dict:
    """What must not depend on earlier requests: the text, how it ended, usage, logprobs."""
    if body.get("stream"):
        events = stream_of(port, body)
        finishes = [e["choices"][0]["finish_reason"] for e in events if isinstance(e, dict) and e.get("choices")
                    and e["choices"][0]["finish_reason"]]
        return {"text": streamed_text(events), "finish": finishes}
    data = completion_of(port, body)
    choice = data["choices"][0]
    usage = {k: v for k, v in data["usage"].items() if k != "prompt_tokens_details"}
    return {"text": choice["message"]["content"], "finish": choice["finish_reason"], "usage": usage,
            "cached": data["usage"]["prompt_tokens_details"]["cached_tokens"],
            "logprobs": (choice.get("logprobs") or {}).get("content")}


def same_answer(warm: dict, fresh: dict) -> bool:
    """Equal, logprobs compared as numbers, the cache's share of the prompt left aside."""
    ignored = ("logprobs", "cached")
    if {k: v for k, v in warm.items() if k not in ignored} != {k: v for k, v in fresh.items() if k not in ignored}:
        return False
    warm_entries, fresh_entries = warm.get("logprobs") or [], fresh.get("logprobs") or []
    if len(warm_entries) != len(fresh_entries):
        return False
    for w, f in zip(warm_entries, fresh_entries):
        if w["token"] != f["token"] or not math.isclose(w["logprob"], f["logprob"], abs_tol=1e-3):
            return False
        if [t["token"] for t in w["top_logprobs"]] != [t["token"] for t in f["top_logprobs"]]:
            return False
    return True


def test_answers_equal_a_fresh_servers_whatever_came_before(tiny_model_path) -> None:
    with local_server(tiny_model_path) as server:
        warm = [answer(server.port, body) for body in SEQUENCE]
        answered = warm[2]["text"]
        follow_up = continuation(answered)
        warm.append(answer(server.port, follow_up))
        warm.append(answer(server.port, chat_body(KEEPER, max_tokens=1)))
    assert warm[6]["text"] == "Z"
    # the same prompt again found all of it in a slot's cache, with the logits kept for its end;
    # after a longer answer the cache holds more than the prompt, and its last token is evaluated
    assert warm[1]["cached"] == warm[1]["usage"]["prompt_tokens"] and warm[0]["cached"] == 0
    assert warm[3]["cached"] == warm[3]["usage"]["prompt_tokens"] - 1
    assert warm[11]["logprobs"] and len(warm[11]["logprobs"][0]["top_logprobs"]) == 3
    for index, body in enumerate(SEQUENCE + [follow_up, chat_body(KEEPER, max_tokens=1)]):
        with local_server(tiny_model_path) as fresh:
            expected = answer(fresh.port, body)
        assert same_answer(warm[index], expected), (index, body, warm[index], expected)
