"""Reference readings of a stream by the official SDK's own MessageStream, for differential tests."""

from __future__ import annotations

from typing import Any


def sdk_http_module() -> Any:
    """The HTTP library the installed SDK runs on: httpx2 from anthropic 1.0 on, httpx before."""
    import importlib

    import anthropic

    major = int(anthropic.__version__.split(".")[0])
    return importlib.import_module("httpx2" if major >= 1 else "httpx")


def sdk_events(data: bytes) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    """Run the SDK's own .stream() on the bytes; return comparable event tuples and the final message."""
    import anthropic

    http = sdk_http_module()

    def handler(request: Any) -> Any:
        return http.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = anthropic.Anthropic(
        api_key="test", base_url="http://sdk.test", max_retries=0,
        http_client=http.Client(transport=http.MockTransport(handler)),
    )
    out: list[tuple[Any, ...]] = []
    with client.messages.stream(model="m", max_tokens=1, messages=[{"role": "user", "content": "hi"}]) as s:
        for event in s:
            out.append(comparable(event))
        message = s.get_final_message().to_dict(mode="json")
    return out, message


def comparable(event: Any) -> tuple[Any, ...]:
    kind = event.type
    if kind == "text":
        return (kind, event.text, event.snapshot)
    if kind == "thinking":
        return (kind, event.thinking, event.snapshot)
    if kind == "signature":
        return (kind, event.signature)
    if kind == "input_json":
        return (kind, event.partial_json, event.snapshot)
    if kind == "citation":
        return (kind, _plain(event.citation), len(event.snapshot))
    if kind in ("content_block_start", "content_block_delta", "content_block_stop"):
        return (kind, event.index)
    return (kind,)


def _plain(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value
