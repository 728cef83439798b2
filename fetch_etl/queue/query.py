"""SQS over the older query protocol, spoken by botocore itself with the vendored 2012-11-05 query model.

boto3 >= 1.28.82 ships only SQS's JSON model; the LocalStack release in Fetch's reference image only speaks
query and answers JSON with HTTP 500. botocore still has the query serializer, parser, signer and retry
handlers: a session whose data path starts with `query_model/` (see the README there) builds a real
boto3 SQS client that speaks query, while sessions without it keep JSON in the same process.

What is ours: the data path, and one guard. botocore reports an answer it cannot read as XML with a
`ResponseParserError` that quotes the whole body (message bodies: clear PII) and is no BotoCoreError; the
query session's parser factory re-raises it as `UnreadableAnswerError`, described by size and type only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import BotoCoreError
from botocore.parsers import ResponseParserError, ResponseParserFactory

MODEL_DIR = Path(__file__).with_name("query_model")


class UnreadableAnswerError(BotoCoreError):
    """An answer that is not the XML the query protocol promises; described by size and type, never quoted."""

    fmt = "{detail}"


class _DescribedParser:
    """botocore's parser for one protocol; its unreadable-answer error named by operation, status and size."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser

    def parse(self, response: dict[str, Any], shape: Any) -> Any:
        try:
            return self._parser.parse(response, shape)
        except ResponseParserError:
            action = getattr(shape, "name", "").removesuffix("Result") or "SQS"
            kind = response.get("headers", {}).get("content-type", "no content-type")
            body = response.get("body") or b""
            raise UnreadableAnswerError(
                detail=f"the {action} answer is not XML (HTTP {response.get('status_code')}, {kind}, {len(body)} bytes)"
            ) from None


class _DescribedParserFactory(ResponseParserFactory):
    def create_parser(self, protocol_name: str) -> Any:
        return _DescribedParser(super().create_parser(protocol_name))


def query_session(profile_name: str | None = None) -> boto3.session.Session:
    """A boto3 session whose SQS client speaks query: its own loader reads the vendored model first."""
    core = botocore.session.get_session()
    core.get_component("data_loader").search_paths.insert(0, str(MODEL_DIR))
    core.register_component("response_parser_factory", _DescribedParserFactory())
    return boto3.session.Session(botocore_session=core, profile_name=profile_name)


def check_query_client(client: Any) -> Any:
    """The client, after making sure the vendored model was the one loaded (a broken install would be JSON)."""
    protocol = client.meta.service_model.protocol
    if protocol != "query":
        raise RuntimeError(f"SQS query model not found under {MODEL_DIR}: botocore loaded a {protocol} model")
    return client
