# End to end with real parts: the replay server on 127.0.0.1 and the official anthropic client (sync and
# async, only base_url changed) driving every repository fixture, malformed ones included, through
# mendstream.stream / astream; the SDK's own .stream() on the same server, to show which cases it fails;
# and 200 concurrent async streams with every message exact.
from __future__ import annotations

import asyncio
from typing import Any

import pytest

from conftest import FIXTURE_NAMES, check_outcome, expected
from mendstream.errors import StreamError
from mendstream.testing import ReplayServer
from mendstream.transports.sdk import astream, stream

anthropic = pytest.importorskip("anthropic")

PARAMS: dict[str, Any] = {"model": "claude-test", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
SDK_MAJOR = int(anthropic.__version__.split(".")[0])
COMPLETE = [n for n in FIXTURE_NAMES if expected(n)["error"] is None]


def pick(name: str) -> dict[str, Any]:
    return {"extra_headers": {"x-mendstream-fixture": name}}


@pytest.fixture(scope="module")
def client(replay_server: ReplayServer) -> Any:
    return anthropic.Anthropic(base_url=replay_server.base_url, api_key="sk-ant-test", max_retries=0)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_sync_stream_every_fixture(client: Any, name: str) -> None:
    error: BaseException | None = None
    with stream(client, **PARAMS, **pick(name)) as s:
        try:
            s.until_done()
        except StreamError as exc:
            error = exc
        assert [r.kind for r in s.repairs] == expected(name)["repairs"]
    check_outcome(name, None if error else s.message, error)
    assert s.response.is_closed
    if error is None:
        final = s.get_final_message()
        assert isinstance(final, anthropic.types.Message)
        assert final.id == expected(name)["message"]["id"]
    elif expected(name)["error"]["class"] == "APIStreamError":
        assert isinstance(error, anthropic.APIStatusError)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
async def test_async_stream_every_fixture(replay_server: ReplayServer, name: str) -> None:
    aclient = anthropic.AsyncAnthropic(base_url=replay_server.base_url, api_key="sk-ant-test", max_retries=0)
    error: BaseException | None = None
    async with astream(aclient, **PARAMS, **pick(name)) as s:
        try:
            await s.until_done()
        except StreamError as exc:
            error = exc
    check_outcome(name, None if error else s.message, error)
    assert s.response.is_closed
    await aclient.close()


def _sdk_result(client: Any, name: str) -> tuple[bool, str]:
    """Run the SDK's own .stream(); (gave the expected message, what happened)."""
    exp = expected(name)
    try:
        with client.messages.stream(**PARAMS, **pick(name)) as s:
            message = s.get_final_message().to_dict(mode="json", warnings=False)
    except Exception as exc:
        return False, f"raised {type(exc).__name__}"
    if exp["message"] is None:
        return False, f"returned a message although the stream ends in {exp['error']['class']}"
    trimmed = {k: v for k, v in message.items() if k in exp["message"] or v is not None}
    if trimmed != exp["message"]:
        return False, "returned a different message"
    return True, "same message"


def test_sdk_own_stream_on_the_same_server(client: Any, capsys: pytest.CaptureFixture[str]) -> None:
    failures = {}
    for name in FIXTURE_NAMES:
        ok, what = _sdk_result(client, name)
        # the sdk_compatible flags were judged against anthropic >= 1.0; 0.x fails a few more
        if expected(name)["sdk_compatible"] and SDK_MAJOR >= 1:
            assert ok, f"{name}: the SDK should handle this fixture but {what}"
        if not ok:
            failures[name] = what
    with capsys.disabled():
        print(f"\nthe SDK's .stream() fails {len(failures)}/{len(FIXTURE_NAMES)} fixtures mendstream handles:")
        for name, what in failures.items():
            print(f"  {name:45} {what}")
    assert len(failures) >= 10


async def test_200_concurrent_async_streams(replay_server: ReplayServer) -> None:
    aclient = anthropic.AsyncAnthropic(base_url=replay_server.base_url, api_key="sk-ant-test", max_retries=0)
    names = [COMPLETE[i % len(COMPLETE)] for i in range(200)]

    async def one(name: str) -> dict[str, Any]:
        async with astream(aclient, **PARAMS, **pick(name)) as s:
            await s.until_done()
            return s.message

    messages = await asyncio.gather(*(one(n) for n in names))
    for name, message in zip(names, messages, strict=True):
        assert message == expected(name)["message"], name
    await aclient.close()
