# Structured outputs: `output_format=` as the SDK's `messages.stream(output_format=...)` takes it (anthropic
# 2.17). A type becomes the request's `output_config.format` (its JSON schema, as the SDK transforms it), and
# each text block of the answer gets a `parsed_output`: the text validated into that type, on the SDK's
# `ParsedMessage` / `ParsedBetaMessage`. Partial objects while streaming are `TextEvent.parsed_snapshot()`
# (events.py), as the SDK offers them. pydantic and the SDK are imported only when an OutputFormat is made.
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mendstream.core.accumulate import cuts_output
from mendstream.core.sdk_events import to_sdk_event, to_sdk_message
from mendstream.errors import OutputFormatError, OutputParseError

__all__ = ["OutputFormat"]


class OutputFormat:
    """What ``output_format=`` adds to a stream: the request's format, and the parsed outputs of its answer.

    Args:
        output_format: a type pydantic can validate into (a ``BaseModel``, a ``TypedDict``, ``list[int]``...),
            as the SDK takes it.
        beta: the request goes to ``client.beta.messages`` (``ParsedBetaMessage``, and the beta SDK's check
            that ``output_config`` has no ``format`` of its own).

    Raises:
        OutputFormatError: ``output_format`` is a schema dict or a string (those go in ``output_config``), or a
            type pydantic cannot make a JSON schema of (a UsageError and a TypeError, as the SDK's TypeError).
    """

    def __init__(self, output_format: Any, *, beta: bool = False) -> None:
        if isinstance(output_format, str | Mapping):
            raise OutputFormatError(
                "`output_format` must be a type; pass a schema dict as `output_config={'format': ...}` instead"
            )
        import pydantic
        from anthropic.lib._parse._transform import transformed_json_schema

        self.output_format = output_format
        self.beta = beta
        try:
            self._adapter: Any = pydantic.TypeAdapter(output_format)
            self.schema: dict[str, Any] = transformed_json_schema(self._adapter)
        except (pydantic.errors.PydanticSchemaGenerationError, pydantic.errors.PydanticUserError) as exc:
            raise OutputFormatError(
                f"Could not generate JSON schema for the given `output_format` type {output_format!r}. "
                "Use a type that works with `pydantic.TypeAdapter`"
            ) from exc
        self._validation_error: type[Exception] = pydantic.ValidationError

    # -- the request ---------------------------------------------------------------------------------------

    def request(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` (without ``output_format``) with the format merged into ``output_config``, as the SDK
        sends it: ``{"format": {"type": "json_schema", "schema": ...}}`` plus the caller's other
        ``output_config`` fields. Raises OutputFormatError when a beta request's ``output_config`` already has a
        ``format`` (the beta SDK refuses both; the standard one lets ``output_format`` win)."""
        out = {k: v for k, v in params.items() if k != "output_format"}
        config = params.get("output_config")
        if self.beta and isinstance(config, Mapping) and config.get("format") is not None:
            raise OutputFormatError(
                "Both output_format and output_config.format were provided. "
                "Please use only output_config.format (output_format is deprecated)."
            )
        fmt = {"type": "json_schema", "schema": self.schema}
        out["output_config"] = {**config, "format": fmt} if isinstance(config, Mapping) else {"format": fmt}
        return out

    # -- the answer ----------------------------------------------------------------------------------------

    def parse(self, text: str) -> Any:
        """``text`` validated into the format (the SDK's ``parse_text``); raises pydantic's ValidationError."""
        return self._adapter.validate_json(text)

    def message(self, message: dict[str, Any], *, final: bool = False) -> Any:
        """``message`` (a Messages API dict) as the SDK's ``ParsedMessage`` (``ParsedBetaMessage``), each text
        block's ``parsed_output`` set as the SDK sets it at the block's stop.

        A text block that does not validate gets ``parsed_output`` None, unless ``final`` and the message
        stopped normally (``end_turn``, ``tool_use``: the output is whole, so it should have matched): then
        OutputParseError (the ValidationError as its cause, the message as its snapshot). A message cut short
        (``max_tokens``, ``refusal``, ...) is returned with None there, nothing lost; the SDK raises
        ValidationError for both.
        """
        parsed = to_sdk_message(message, beta=self.beta, parsed=True)
        if isinstance(parsed, dict):  # no SDK: nothing to parse into
            return parsed
        stop_reason = message.get("stop_reason")
        for index, block in enumerate(getattr(parsed, "content", None) or []):
            if getattr(block, "type", None) != "text":
                continue
            try:
                value = self.parse(block.text)
            except self._validation_error as exc:
                if final and stop_reason is not None and not cuts_output(stop_reason):
                    raise OutputParseError(
                        f"text block {index} does not match output_format {self.output_format!r} "
                        f"(stop_reason {stop_reason!r}): {exc}",
                        text=block.text,
                        index=index,
                        snapshot=message,
                    ) from exc
                value = None
            block.parsed_output = value
        return parsed

    def sdk_event(self, event: Any) -> Any:
        """mendstream's ``event`` as the SDK's, with the parsed outputs the SDK's helper puts on it: the text
        block of a ``content_block_stop`` and the message of a ``message_stop`` (None where the text does not
        validate: events never raise, ``get_final_message()`` does). Other events as ``to_sdk_event``."""
        kind = event.type
        if kind == "content_block_stop" and event.content_block.get("type") == "text":
            from anthropic._models import construct_type
            from anthropic.lib.streaming import ParsedBetaContentBlockStopEvent, ParsedContentBlockStopEvent

            cls = ParsedBetaContentBlockStopEvent if self.beta else ParsedContentBlockStopEvent
            sdk: Any = construct_type(type_=cls, value=event.to_dict())
            block = sdk.content_block
            try:
                block.parsed_output = self.parse(block.text)
            except self._validation_error:
                block.parsed_output = None
            return sdk
        if kind == "message_stop":
            from anthropic._models import construct_type
            from anthropic.lib.streaming import ParsedBetaMessageStopEvent, ParsedMessageStopEvent

            stop_cls = ParsedBetaMessageStopEvent if self.beta else ParsedMessageStopEvent
            stop: Any = construct_type(type_=stop_cls, value={"type": "message_stop"})
            stop.message = self.message(event.message.to_dict())
            return stop
        return to_sdk_event(event, beta=self.beta)
