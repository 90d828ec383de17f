"""Extract the Responses API's schemas from OpenAI's OpenAPI document into a JSON Schema file.

    python -m tests.support.extract_responses_schemas OPENAPI_JSON COMMIT COMMIT_DATE > tests/openai_responses_schemas.json

``OPENAPI_JSON`` is ``openapi.json`` of github.com/openai/openai-openapi at ``COMMIT``. The output
holds the ``$ref`` closure of :data:`ROOTS` under ``$defs``, transformed mechanically only:
``#/components/schemas/X`` refs become ``#/$defs/X``; ``nullable: true`` becomes
``anyOf [..., {type: null}]``; ``description``, ``example``, ``title``, ``discriminator`` and
``x-*`` keys are dropped (annotations a validator ignores, or that it cannot read), never a
property of that name (see :mod:`tests.support.extract_schemas`).
"""

from __future__ import annotations

import json
import sys

from tests.support.extract_schemas import schema_document

ROOTS = ["Response", "ResponseStreamEvent", "ResponseCreatedEvent", "ResponseInProgressEvent",
         "ResponseOutputItemAddedEvent", "ResponseContentPartAddedEvent", "ResponseTextDeltaEvent",
         "ResponseTextDoneEvent", "ResponseContentPartDoneEvent", "ResponseOutputItemDoneEvent",
         "ResponseFunctionCallArgumentsDeltaEvent", "ResponseFunctionCallArgumentsDoneEvent",
         "ResponseCompletedEvent", "ResponseIncompleteEvent", "ResponseFailedEvent", "ResponseErrorEvent",
         "OutputItem", "ErrorResponse"]


def main(argv: list) -> None:
    path, commit, date = argv
    with open(path) as f:
        document = json.load(f)
    out = schema_document(document, commit, date, ROOTS, "tests/support/extract_responses_schemas.py")
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
