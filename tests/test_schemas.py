"""OpenAI's JSON schemas as the judge: the validator catches what a client would choke on, and the
local backend's model list, model object and errors pass it."""

from __future__ import annotations

import jsonschema
import pytest

from tests.conftest import chat_body, completion_of, error_of, post_chat, validate
from tests.support.rawhttp import get


def test_validator_rejects_objects_clients_would_choke_on(tiny_server) -> None:
    good = completion_of(tiny_server.port, chat_body(max_tokens=3))
    validate(good, "CreateChatCompletionResponse")
    broken = [
        {**good, "object": "chat.completion.chunk"},
        {**good, "choices": [{**good["choices"][0], "finish_reason": "done"}]},
        {**good, "usage": {"prompt_tokens": "9", "completion_tokens": 3, "total_tokens": 12}},
        {key: value for key, value in good.items() if key != "created"},
    ]
    for obj in broken:
        with pytest.raises(jsonschema.ValidationError):
            validate(obj, "CreateChatCompletionResponse")


def test_models_list_and_model_object(tiny_server) -> None:
    listing = get(tiny_server.port, "/v1/models")
    assert listing.status == 200
    validate(listing.json(), "ListModelsResponse")
    assert [m["id"] for m in listing.json()["data"]] == ["tiny"]
    one = get(tiny_server.port, "/v1/models/tiny")
    assert one.status == 200
    validate(one.json(), "Model")
    assert one.json()["id"] == "tiny" and one.json()["owned_by"]


def test_unknown_model_object_is_a_404_error_object(tiny_server) -> None:
    error = error_of(get(tiny_server.port, "/v1/models/gpt-9"), 404, "model")
    assert error["code"] == "model_not_found"


def test_errors_of_the_chat_route_are_error_objects(tiny_server) -> None:
    error_of(post_chat(tiny_server.port, b"{not json"), 400)
    error_of(post_chat(tiny_server.port, chat_body(temperature=5)), 400, "temperature")
