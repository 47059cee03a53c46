"""The request sanitiser (mendstream/wire/sanitize.py) and the validating replay server.

Each rule is shown twice against a real ReplayServer(validate=True) on 127.0.0.1 with the official SDK as the
client: the request as an agent sends it gets the API's 400 with the API's exact error text, and the same
request after sanitize_request gets the fixture's answer. Around that: the caller's objects are never mutated,
thinking blocks and the assistant turns holding them come back as the very same objects, the property tests
(sanitize is idempotent, its output validates clean when every problem is fixable, a valid request comes back
as the same object), real recorded assistant turns from ../shared/corpus, image headers read against Pillow,
hostile shapes (wrong types, deep nesting, huge lists) and the work they cost.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import mendstream
from conftest import BASIC_SSE, sync_client
from mendstream.errors import UsageError
from mendstream.testing import ReplayServer
from mendstream.wire.sanitize import (
    EMPTY_MESSAGE,
    EMPTY_TEXT,
    IMAGE_TOO_LARGE,
    IMAGE_TOO_MANY_PIXELS,
    MISSING_TOOL_RESULT,
    ORPHAN_TOOL_RESULT,
    RULES,
    TOO_MANY_MEDIA,
    TRAILING_WHITESPACE,
    WHITESPACE_TEXT,
    RequestChange,
    RequestLimits,
    apply_sanitize,
    image_dimensions,
    sanitize_body,
    sanitize_request,
    validate_request,
)
from workcount import count_work

SRC = str(Path(__file__).resolve().parent.parent / "src")
CORPUS = Path(__file__).resolve().parents[1] / ".." / "shared" / "corpus"
THINKING = {"type": "thinking", "thinking": "Let me look at the file first.\n", "signature": "EqQBCkYIBxgCKkDsig=="}
REDACTED = {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr"}


def png(width: int, height: int, pad: int = 0) -> str:
    """Base64 of a PNG header (signature and IHDR) announcing ``width`` x ``height``, then ``pad`` bytes."""
    raw = (b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + width.to_bytes(4, "big")
           + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00" + b"\x00" * 4 + b"\x00" * pad)
    return base64.b64encode(raw).decode()


def image(data: str) -> dict[str, Any]:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def tool_use(ident: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": ident, "name": "read_file", "input": {"path": "a.txt"}}


def tool_result(ident: str, content: Any = "file contents") -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": ident, "content": content}


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def assistant(content: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": content}


def request(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "claude-test", "max_tokens": 64, "messages": messages, **extra}


def kinds(problems: list[Any]) -> list[str]:
    return [p.kind for p in problems]


# ---------------------------------------------------------------------------------------------------
# Each rule: the unmodified SDK gets the API's 400 from the validating server; sanitised, it gets an answer.
# The expected messages are the API's own texts, as recorded in public bug reports (docs/requests.md).

MISSING = ("messages.1: `tool_use` ids were found without `tool_result` blocks immediately after: {ids}. Each "
           "`tool_use` block must have a corresponding `tool_result` block in the next message.")
ORPHAN = ("messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {ident}. Each "
          "`tool_result` block must have a corresponding `tool_use` block in the previous message.")

CASES: dict[str, tuple[dict[str, Any], str]] = {
    "empty text block": (
        request([user([text(""), text("Summarise a.txt")])]),
        "messages: text content blocks must be non-empty",
    ),
    "empty string content": (
        request([user("Hi"), assistant(""), user("Are you there?")]),
        "messages: text content blocks must be non-empty",
    ),
    "empty text block in a tool_result": (
        request([user("Read a.txt"), assistant([tool_use("toolu_1")]),
                 user([tool_result("toolu_1", [text("")])])]),
        "messages: text content blocks must be non-empty",
    ),
    "whitespace-only message": (
        request([user("Hi"), assistant([text("\n")]), user("Hello?")]),
        "messages: text content blocks must contain non-whitespace text",
    ),
    "empty message": (
        request([user("Hi"), assistant([]), user("Hello?")]),
        "messages.1: all messages must have non-empty content except for the optional final assistant message",
    ),
    "whitespace-only system prompt": (
        request([user("Hi")], system=" \n"),
        "system: text content blocks must contain non-whitespace text",
    ),
    "prefill ending in whitespace": (
        request([user("Write a haiku"), assistant("Here is a haiku:\n")]),
        "messages: final assistant content cannot end with trailing whitespace",
    ),
    "agent interrupted mid-tool": (
        request([user("Read a.txt and b.txt"), assistant([text("Reading both."), tool_use("toolu_a"),
                                                          tool_use("toolu_b")]),
                 user("Stop, read c.txt instead")]),
        MISSING.format(ids="toolu_a, toolu_b"),
    ),
    "one of two results lost": (
        request([user("Read a.txt and b.txt"), assistant([tool_use("toolu_a"), tool_use("toolu_b")]),
                 user([tool_result("toolu_a")])]),
        MISSING.format(ids="toolu_b"),
    ),
    "tool_use as the last message": (
        request([user("Read a.txt"), assistant([tool_use("toolu_a")])]),
        MISSING.format(ids="toolu_a"),
    ),
    "tool_result whose tool_use was trimmed away": (
        request([user([tool_result("toolu_gone", "42 lines"), text("Go on")])]),
        ORPHAN.format(i=0, j=0, ident="toolu_gone"),
    ),
    "tool_result answering an older turn": (
        request([user("Read a.txt"), assistant([tool_use("toolu_a")]), user([tool_result("toolu_a")]),
                 assistant("Done."), user([tool_result("toolu_a", "again"), text("and?")])]),
        ORPHAN.format(i=4, j=0, ident="toolu_a"),
    ),
    "too many images": (
        request([user([image(png(8, 8)) for _ in range(101)] + [text("Which one is red?")])]),
        "too many images and documents: 101 + 0 > 100",
    ),
    "image over 5 MB of base64": (
        request([user([image("A" * (5 * 1024 * 1024 + 4)), text("What is this?")])]),
        "messages.0.content.0.image.source.base64: image exceeds 5 MB maximum: 5242884 bytes > 5242880 bytes",
    ),
    "image wider than 8000 pixels": (
        request([user([image(png(8001, 600)), text("What is this?")])]),
        "messages.0.content.0.image.source.base64.data: At least one of the image dimensions exceed max allowed "
        "size: 8000 pixels",
    ),
    "large image in a many-image request, inside a tool_result": (
        request([user("Screenshot the pages"), assistant([tool_use("toolu_s")]),
                 user([tool_result("toolu_s", [image(png(640, 480)) for _ in range(20)]
                                   + [image(png(2560, 1440))])])]),
        "messages.2.content.0.tool_result.content.20.image.source.base64.data: At least one of the image "
        "dimensions exceed max allowed size for many-image requests: 2000 pixels",
    ),
}


@pytest.fixture(scope="module")
def validating_server() -> Iterator[ReplayServer]:
    with ReplayServer({"basic": BASIC_SSE}, validate=True) as server:
        yield server


@pytest.mark.parametrize("case", list(CASES))
def test_each_rule_the_api_400s_without_the_sanitiser_and_answers_with_it(
    case: str, validating_server: ReplayServer
) -> None:
    anthropic = pytest.importorskip("anthropic")
    payload, api_message = CASES[case]
    client = sync_client(base_url=validating_server.base_url)
    with pytest.raises(anthropic.BadRequestError) as rejected:
        client.messages.create(**payload)
    assert rejected.value.status_code == 400
    assert rejected.value.body == {"type": "error", "error": {"type": "invalid_request_error",
                                                              "message": api_message}}
    problems = validate_request(payload)
    assert problems and problems[0].message == api_message

    before = copy.deepcopy(payload)
    result = sanitize_request(payload)
    assert payload == before  # the caller's request is untouched
    assert result.changes and validate_request(result.payload) == []
    message = client.messages.create(**result.payload)
    assert [block.text for block in message.content] == ["Hello world"]


def test_every_rule_has_a_case_and_a_documented_source() -> None:
    problem_kinds = {p.kind for payload, _ in CASES.values() for p in validate_request(payload)}
    assert problem_kinds == set(RULES)
    docs = (Path(__file__).resolve().parent.parent / "docs" / "requests.md").read_text(encoding="utf-8")
    for rule in RULES.values():
        assert f"`{rule.kind}`" in docs, rule.kind
        assert rule.source in docs, rule.source


def test_sanitised_requests_stream_through_mendstream_and_the_sdk(validating_server: ReplayServer) -> None:
    pytest.importorskip("anthropic")
    client = sync_client(base_url=validating_server.base_url)
    payload = CASES["agent interrupted mid-tool"][0]
    params, changes = apply_sanitize(payload, True)
    assert [c.kind for c in changes] == [MISSING_TOOL_RESULT, MISSING_TOOL_RESULT]
    with mendstream.stream(client, **params) as stream:
        assert stream.get_final_text() == "Hello world"
    with client.messages.stream(**params) as sdk_stream:
        assert sdk_stream.get_final_text() == "Hello world"
    sent = validating_server.requests[-1].body["messages"][2]["content"]
    assert [(b["type"], b.get("tool_use_id"), b.get("is_error")) for b in sent] == [
        ("tool_result", "toolu_a", True), ("tool_result", "toolu_b", True), ("text", None, None)]
    assert sent[2] == text("Stop, read c.txt instead")


def test_the_in_process_mock_client_validates_too() -> None:
    anthropic = pytest.importorskip("anthropic")
    from mendstream.testing import anthropic_client

    client = anthropic_client({"basic": BASIC_SSE}, validate=True)
    payload, api_message = CASES["prefill ending in whitespace"]
    with pytest.raises(anthropic.BadRequestError) as rejected:
        client.messages.create(**payload)
    assert rejected.value.body["error"]["message"] == api_message
    assert client.messages.create(**sanitize_request(payload).payload).content[0].text == "Hello world"
    client.close()
    lenient = anthropic_client({"basic": BASIC_SSE})  # validate defaults to off: what the server always did
    assert lenient.messages.create(**payload).content[0].text == "Hello world"
    lenient.close()


def test_serve_validate_subprocess(tmp_path: Path) -> None:
    anthropic = pytest.importorskip("anthropic")
    (tmp_path / "basic.sse").write_bytes(BASIC_SSE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mendstream", "serve", str(tmp_path), "--port", "0", "--quiet", "--validate"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC},
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "serve printed no base_url within 60 s"
        line = proc.stdout.readline()
        assert line.startswith("base_url: http://127.0.0.1:")
        client = sync_client(base_url=line.split(": ", 1)[1].strip())
        payload, api_message = CASES["tool_result whose tool_use was trimmed away"]
        with pytest.raises(anthropic.BadRequestError) as rejected:
            client.messages.create(**payload)
        assert rejected.value.body["error"]["message"] == api_message
        assert client.messages.create(**sanitize_request(payload).payload).content[0].text == "Hello world"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------------
# What each fix does, exactly.


def test_the_fixes_in_detail() -> None:
    payload = request([
        user([text(""), text("Read a.txt"), image(png(10, 10))]),
        assistant([text("Reading."), tool_use("toolu_1"), tool_use("toolu_2")]),
        user([text("(pasted)"), tool_result("toolu_1", [text("line 1"), text("")]),
              tool_result("toolu_9", [text("stale"), image(png(4, 4))])]),
        assistant(""),
        user("Go on"),
        assistant([text("The answer is"), text(" \n")]),
    ], system=[text(""), text("You are terse.")])
    result = sanitize_request(payload)
    out = result.payload
    assert out["system"] == [text("You are terse.")]
    assert out["messages"][0] == user([text("Read a.txt"), payload["messages"][0]["content"][2]])
    assert out["messages"][1] is payload["messages"][1]  # untouched messages are shared, not copied
    third = out["messages"][2]["content"]
    assert third[0] == text("(pasted)")
    assert third[1] == tool_result("toolu_1", [text("line 1")])
    assert third[2]["tool_use_id"] == "toolu_2" and third[2]["is_error"] is True
    assert third[3]["text"].startswith("[tool result for tool call toolu_9") and third[3]["text"].endswith("]")
    assert third[4:] == [text("stale"), payload["messages"][2]["content"][2]["content"][1]]
    assert out["messages"][3] is payload["messages"][4]  # the empty assistant message is gone
    assert out["messages"][4] == assistant([text("The answer is")])
    assert [(c.kind, c.path) for c in result.changes] == [
        (EMPTY_TEXT, "system.0"),
        (EMPTY_TEXT, "messages.0.content.0"),
        (MISSING_TOOL_RESULT, "messages.1"),
        (EMPTY_TEXT, "messages.2.content.1.content.1"),
        (ORPHAN_TOOL_RESULT, "messages.2.content.2"),
        (EMPTY_TEXT, "messages.3"),
        (EMPTY_MESSAGE, "messages.3"),
        (TRAILING_WHITESPACE, "messages.5.content.1"),
    ]
    orphan = next(c for c in result.changes if c.kind == ORPHAN_TOOL_RESULT)
    assert orphan.raw is payload["messages"][2]["content"][2] and (orphan.message, orphan.block) == (2, 2)
    assert isinstance(orphan.to_dict(), dict) and orphan.to_dict()["kind"] == ORPHAN_TOOL_RESULT
    assert validate_request(out) == []


def test_an_orphan_result_keeps_its_cache_marker_and_error_flag() -> None:
    marker = {"type": "ephemeral"}
    block = {**tool_result("toolu_x", "boom"), "is_error": True, "cache_control": marker}
    out = sanitize_request(request([user([block])])).payload
    (note,) = out["messages"][0]["content"]
    assert note["text"].startswith("[tool result (an error result) for tool call toolu_x") and "\nboom" in note["text"]
    assert note["cache_control"] is marker


def test_media_are_replaced_by_notes_oldest_first() -> None:
    marker = {"type": "ephemeral"}
    big = {**image("A" * 400), "cache_control": marker}
    document = {"type": "document", "title": "spec.pdf", "source": {"type": "base64", "media_type":
                                                                     "application/pdf", "data": "JVBERi0x"}}
    payload = request([user([document, image(png(10, 10)), big, image(png(60, 10)), text("Compare them")])])
    limits = RequestLimits(max_media=3, max_image_bytes=300, many_images=1, many_image_pixels=50)
    result = sanitize_request(payload, limits=limits)
    content = result.payload["messages"][0]["content"]
    assert [(c.kind, c.block) for c in result.changes] == [
        (TOO_MANY_MEDIA, 0), (IMAGE_TOO_LARGE, 2), (IMAGE_TOO_MANY_PIXELS, 3)]
    assert content[0] == text("[document 'spec.pdf' removed: the request held 3 images and 1 documents; the API "
                              "accepts at most 3]")
    assert content[1] is payload["messages"][0]["content"][1]
    assert content[2]["text"] == "[image removed: 400 bytes > 300 bytes; over the API's limit]"
    assert content[2]["cache_control"] is marker
    assert content[3]["text"] == "[image removed: 60x10 pixels > 50 (many-image request); over the API's limit]"
    assert validate_request(result.payload, limits=limits) == []
    assert [p.kind for p in validate_request(payload, limits=limits)] == [
        TOO_MANY_MEDIA, IMAGE_TOO_LARGE, IMAGE_TOO_MANY_PIXELS]


def test_unfixable_problems_are_left_whole_and_still_reported() -> None:
    # An empty final user message: removing it would turn the request into a prefill; inventing text is
    # not the sanitiser's to do. An empty first message before an assistant turn: removing it would start
    # the request with an assistant turn. Both stay exactly as sent.
    for payload in (request([user("Hi"), assistant("Hello"), user([text("")])]),
                    request([user(""), assistant("Hello"), user("Hi")])):
        result = sanitize_request(payload)
        assert result.payload is payload and result.changes == ()
        assert kinds(validate_request(payload)) == [EMPTY_TEXT]


def test_an_empty_final_assistant_message_is_valid_and_kept() -> None:
    payload = request([user("Hi"), assistant([])])
    assert validate_request(payload) == []
    assert sanitize_request(payload).payload is payload


def test_thinking_turns_are_never_changed() -> None:
    # The assistant turn holding thinking blocks must reach the API as it was: its empty text block is left
    # (and still reported), while the tool_use it made gets its missing result in the next message.
    thinking_turn = assistant([THINKING, REDACTED, text(""), tool_use("toolu_t")])
    payload = request([user("Fix the bug"), thinking_turn, user("Never mind")])
    encoded = json.dumps(thinking_turn)
    result = sanitize_request(payload)
    assert result.payload["messages"][1] is thinking_turn
    assert json.dumps(result.payload["messages"][1]) == encoded
    assert result.payload["messages"][2]["content"][0]["tool_use_id"] == "toolu_t"
    assert kinds(validate_request(result.payload)) == [EMPTY_TEXT]
    # A final assistant turn with thinking is not trimmed either.
    final = assistant([THINKING, text("Answer: ")])
    assert sanitize_request(request([user("Q"), final])).payload["messages"][1] is final


def test_sdk_model_blocks_are_read_and_never_mutated() -> None:
    anthropic = pytest.importorskip("anthropic")
    types = anthropic.types
    thinking = types.ThinkingBlock(type="thinking", thinking="hmm", signature="sig==")
    content = [thinking, types.TextBlock(type="text", text="ok"), types.ToolUseBlock(
        type="tool_use", id="toolu_m", name="f", input={})]
    payload = request([user("Q"), assistant(content), user("next")])
    result = sanitize_request(payload)
    assert result.payload["messages"][1]["content"] is content
    assert result.payload["messages"][2]["content"][0]["tool_use_id"] == "toolu_m"
    prefill = types.TextBlock(type="text", text="Sure, ")
    result = sanitize_request(request([user("Q"), assistant([prefill])]))
    assert result.payload["messages"][1]["content"] == [{"type": "text", "text": "Sure,"}]  # as the SDK sends it
    assert prefill.text == "Sure, "
    body = sanitize_body(b"{}", payload=request([user("Q"), assistant([types.TextBlock(type="text", text="a ")])]))
    assert json.loads(body.body)["messages"][1]["content"][0]["text"] == "a"


def test_sanitize_body_and_apply_sanitize() -> None:
    raw = json.dumps(request([user([text(""), text("Hi")])])).encode()
    out = sanitize_body(raw)
    assert json.loads(out.body)["messages"][0]["content"] == [text("Hi")] and out.changes
    clean = json.dumps(request([user("Hi")])).encode()
    assert sanitize_body(clean).body is clean
    with pytest.raises(UsageError, match="not JSON"):
        sanitize_body(b"{nope")
    with pytest.raises(UsageError, match="not an object"):
        sanitize_body(b"[1]")
    params = request([user("Hi")])
    assert apply_sanitize(params, False) == (params, ())
    assert apply_sanitize(params, True)[0] is params
    tight = RequestLimits(max_media=1)
    many = request([user([image(png(2, 2)), image(png(2, 2)), text("?")])])
    assert [c.kind for c in apply_sanitize(many, tight)[1]] == [TOO_MANY_MEDIA]
    with pytest.raises(UsageError, match="sanitize must be"):
        apply_sanitize(params, "yes")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# Nasty inputs: a clear UsageError for a caller's misuse, everything else passes through untouched.


@pytest.mark.parametrize("payload", [None, [], "messages", 3, b"{}"])
def test_a_payload_that_is_not_a_mapping_is_a_usage_error(payload: Any) -> None:
    with pytest.raises(UsageError, match="must be a mapping"):
        sanitize_request(payload)
    with pytest.raises(UsageError, match="must be a mapping"):
        validate_request(payload)


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "100"])
def test_bad_limits_are_usage_errors(bad: Any) -> None:
    with pytest.raises(UsageError, match="max_media"):
        RequestLimits(max_media=bad)
    with pytest.raises(UsageError, match="limits must be"):
        sanitize_request(request([]), limits={"max_media": 1})  # type: ignore[arg-type]


def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("payload", [
    {"messages": None}, {"messages": "hi"}, {"messages": {"role": "user"}}, {"messages": iter([])},
    {"messages": [None, 3, "user", ["a"], {"role": 7, "content": "x"}, {"role": "user"},
                  {"role": "user", "content": 5}, {"role": "system", "content": ""}]},
    {"messages": [user([None, 1, "x", [], {"type": None}, {"type": ["text"]}, {"type": "text", "text": None},
                        {"type": "tool_result"}, {"type": "tool_result", "tool_use_id": 5},
                        {"type": "image", "source": "A" * 10}, {"type": "image", "source": {"type": "base64",
                                                                                             "data": 12}}])]},
    {"messages": [user([{"type": "tool_result", "tool_use_id": 5, "content": _deep(50_000)}])]},
    {"messages": [assistant([{"type": "tool_use", "id": ["x"]}]), user("ok")]},
    {"system": {"type": "text"}, "messages": []},
    {"system": [None, {"type": "text", "text": 3}], "messages": []},
])
def test_shapes_the_rules_do_not_read_pass_through_untouched(payload: Any) -> None:
    assert sanitize_request(payload).payload is payload
    assert validate_request(payload) == []


_KEYS = st.sampled_from(["role", "content", "type", "text", "id", "tool_use_id", "source", "data", "messages",
                          "system", "is_error", "cache_control", "title"])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2, 2),
                     st.sampled_from(["", " ", "user", "assistant", "text", "tool_use", "tool_result", "image",
                                      "document", "thinking", "base64", "t1", png(9000, 1), "ok \n"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.dictionaries(_KEYS, _JSON, max_size=4),
                 st.lists(st.dictionaries(_KEYS, _JSON, max_size=4), max_size=6).map(lambda m: {"messages": m})))
def test_arbitrary_json_never_raises_and_never_mutates(payload: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    problems = validate_request(payload)
    result = sanitize_request(payload)
    assert payload == before
    assert all(p.message and p.error_body()["error"]["type"] == "invalid_request_error" for p in problems)
    again = sanitize_request(result.payload)
    assert again.payload is result.payload and again.changes == ()
    json.dumps(result.payload)  # still plain JSON


def test_images_that_are_not_clean_base64_are_not_misread() -> None:
    good = png(9000, 10)
    for data in (good[:10] + "\n" + good[10:], good[:20], "!!!!" + good, good[:8] + "@" + good[9:], "", "====",
                 base64.b64encode(b"GIF89a").decode(), base64.b64encode(b"\xff\xd8\xff\xc0").decode(),
                 base64.b64encode(b"\xff\xd8" + b"\xff\xe1\xff\xff" * 3).decode()):
        assert image_dimensions(data) is None, data
    assert image_dimensions(good) == (9000, 10)


def test_hostile_sizes_cost_linear_work() -> None:
    def shapes(n: int) -> list[dict[str, Any]]:
        return [
            request([user("Q"), *([assistant(""), user("")] * n), user("end")]),  # many empty messages
            request([user([tool_result(f"t{i}") for i in range(n)])]),  # many orphans in one message
            request([user("Q"), *[m for i in range(n) for m in (assistant([tool_use(f"t{i}")]),)], user("end")]),
            request([user([image(png(9000, 2)) for _ in range(n)])]),  # many images over every limit
            request([user("Q"), assistant([tool_use("t")]),
                     user([tool_result("t", [image(png(9000, 2)) for _ in range(n)])])]),
            request([user("Q"), assistant([text("a"), *[text(" ") for _ in range(n)]])]),
            request([user([text("") for _ in range(n)] + [text("Q")])]),
        ]

    small, large = shapes(200), shapes(1600)
    for index, (a, b) in enumerate(zip(small, large, strict=True)):
        small_work = count_work(lambda a=a: sanitize_request(a))
        large_work = count_work(lambda b=b: sanitize_request(b))
        assert large_work.operations <= 10 * small_work.operations, (index, small_work, large_work)
        small_check = count_work(lambda a=a: validate_request(a))
        large_check = count_work(lambda b=b: validate_request(b))
        assert large_check.operations <= 10 * small_check.operations, (index, small_check, large_check)


# ---------------------------------------------------------------------------------------------------
# Image headers, differentially against Pillow.


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(["PNG", "GIF", "JPEG", "JPEG-progressive", "JPEG-icc", "WEBP", "WEBP-lossless",
                         "WEBP-extended"]),
    width=st.integers(1, 300),
    height=st.integers(1, 300),
)
def test_image_dimensions_match_pillow(fmt: str, width: int, height: int) -> None:
    pil = pytest.importorskip("PIL.Image")
    picture = pil.new("RGB", (width, height), (200, 30, 30))
    out = io.BytesIO()
    if fmt == "JPEG-progressive":
        picture.save(out, "JPEG", progressive=True)
    elif fmt == "JPEG-icc":  # an APP2 segment of 70 KB before the frame header: the walk must skip it
        picture.save(out, "JPEG", icc_profile=b"\x00" * 60_000, exif=b"Exif\x00\x00" + b"\x00" * 5000)
    elif fmt == "WEBP-lossless":
        picture.save(out, "WEBP", lossless=True)
    elif fmt == "WEBP-extended":  # metadata makes it a VP8X file
        picture.save(out, "WEBP", exif=b"Exif\x00\x00" + b"\x00" * 64)
    else:
        picture.save(out, fmt.split("-")[0])
    data = base64.b64encode(out.getvalue()).decode()
    assert image_dimensions(data) == pil.open(io.BytesIO(out.getvalue())).size


# ---------------------------------------------------------------------------------------------------
# Properties over generated conversations. Small limits make the media rules reachable with small images.

LIMITS = RequestLimits(max_media=4, max_image_bytes=300, max_image_pixels=100, many_images=2,
                       many_image_pixels=50)
IDS = ["t1", "t2", "t3"]
_texts = st.sampled_from(["", " ", "\n\t", "ok", "ok ", "a\n", " x "])
_images = st.builds(lambda w, h, pad: image(png(w, h, pad)), st.integers(1, 120), st.integers(1, 120),
                    st.sampled_from([0, 10, 300]))
_user_blocks = st.one_of(
    _texts.map(text), _images,
    st.builds(tool_result, st.sampled_from(IDS), st.one_of(_texts, st.lists(st.one_of(_texts.map(text), _images),
                                                                             max_size=3))),
)
_assistant_blocks = st.one_of(_texts.map(text), st.sampled_from(IDS).map(tool_use))
_user_messages = st.one_of(_texts.map(user), st.lists(_user_blocks, max_size=4).map(user))
_assistant_messages = st.one_of(
    _texts.map(assistant),
    st.lists(_assistant_blocks, max_size=3).map(assistant),
    # A thinking turn: its other blocks are fine on their own, so that every problem stays fixable.
    st.lists(st.one_of(st.just(text("ok")), st.sampled_from(IDS).map(tool_use)), max_size=2).map(
        lambda rest: assistant([THINKING, *rest])),
)
_systems = st.one_of(st.none(), _texts, st.lists(_texts.map(text), max_size=3))


@st.composite
def conversations(draw: st.DrawFn, fixable: bool) -> dict[str, Any]:
    middle = draw(st.lists(st.one_of(_user_messages, _assistant_messages), max_size=8))
    if fixable:  # a first and a last message that need nothing the sanitiser cannot do
        last = draw(st.one_of(st.just(user("end")), st.sampled_from(["fine", "fine \n", "x\t"]).map(assistant)))
        messages = [user("start"), *middle, last]
    else:
        messages = middle
    payload = request(messages)
    system = draw(_systems)
    if system is not None:
        payload["system"] = system
    return payload


def _blocks_of(payload: Any) -> Iterator[Any]:
    for message in payload.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            yield from content


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(fixable=False))
@example(request([user([text(" ")]), assistant([THINKING, tool_use("t1")])]))
def test_sanitize_properties_on_any_conversation(payload: dict[str, Any]) -> None:
    before = copy.deepcopy(payload)
    problems = validate_request(payload, limits=LIMITS)
    result = sanitize_request(payload, limits=LIMITS)
    assert payload == before  # never mutates
    assert all(isinstance(c, RequestChange) and c.kind in RULES for c in result.changes)
    if not problems:
        assert result.payload is payload and result.changes == ()
    again = sanitize_request(result.payload, limits=LIMITS)
    assert again.payload is result.payload and again.changes == ()  # idempotent
    # Only text-shape problems can survive (an empty final user message, ...); tool and media rules never.
    left = set(kinds(validate_request(result.payload, limits=LIMITS)))
    assert left <= {EMPTY_TEXT, WHITESPACE_TEXT, EMPTY_MESSAGE, TRAILING_WHITESPACE}, left
    # Thinking turns come back as the same objects, in the same order.
    def thinking_turns(p: Any) -> list[int]:
        return [id(m) for m in p["messages"] if isinstance(m.get("content"), list)
                and any(b.get("type") == "thinking" for b in m["content"])]
    assert thinking_turns(result.payload) == thinking_turns(payload)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(fixable=True))
def test_sanitized_fixable_conversations_validate_clean(payload: dict[str, Any]) -> None:
    result = sanitize_request(payload, limits=LIMITS)
    assert validate_request(result.payload, limits=LIMITS) == [], (payload, result.payload)
    assert bool(result.changes) == bool(validate_request(payload, limits=LIMITS))


# ---------------------------------------------------------------------------------------------------
# Real assistant turns: every recorded stream in ../shared/corpus whose final message calls a client tool,
# sent back the way an interrupted agent sends it (the tool never ran, the user typed something else).

CORPUS_FILES = sorted(CORPUS.glob("*.sse")) if CORPUS.is_dir() else []
TOOL_TURNS = [p for p in CORPUS_FILES if b'"message_stop"' in p.read_bytes() and b'"tool_use"' in p.read_bytes()]


@pytest.mark.skipif(not TOOL_TURNS, reason="../shared/corpus is absent (it is not part of the repository)")
@pytest.mark.parametrize("path", TOOL_TURNS, ids=[p.name for p in TOOL_TURNS])
def test_recorded_tool_turns_interrupted_are_fixed_without_touching_them(path: Path) -> None:
    try:
        with mendstream.replay(path) as stream:
            stream.until_done()
            content = stream.message["content"]
    except mendstream.StreamError:
        pytest.skip("the recorded stream does not complete")
    ids = [b["id"] for b in content if b.get("type") == "tool_use"]
    if not ids:
        pytest.skip("no client tool_use in the final message")
    turn = assistant(content)
    encoded = json.dumps(turn, sort_keys=False)
    payload = request([user("Do the task"), turn, user("Stop, do something else")])
    assert MISSING.format(ids=", ".join(dict.fromkeys(ids))) in [p.message for p in validate_request(payload)]
    result = sanitize_request(payload)
    out = result.payload["messages"]
    assert json.dumps(out[1], sort_keys=False) == encoded  # thinking, signatures and all: byte for byte
    added = [b["tool_use_id"] for b in out[2]["content"] if b.get("type") == "tool_result"]
    assert added == list(dict.fromkeys(ids))
    assert MISSING_TOOL_RESULT not in kinds(validate_request(result.payload))


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("entry", ["stream", "astream", "httpx", "RepairTransport", "AsyncRepairTransport"])
def test_sanitize_on_every_entry_point_turns_the_400_into_an_answer(
    case: str, entry: str, validating_server: ReplayServer
) -> None:
    anthropic = pytest.importorskip("anthropic")
    import asyncio

    import mendstream.httpx as mhttpx
    from mendstream.testing import sdk_http_module

    payload, _ = CASES[case]
    before = copy.deepcopy(payload)
    base_url = validating_server.base_url
    http = sdk_http_module()
    if entry == "stream":
        client = sync_client(base_url=base_url)
        with pytest.raises(anthropic.BadRequestError):
            mendstream.stream(client, **payload)
        with mendstream.stream(client, **payload, sanitize=True) as s:
            assert s.get_final_text() == "Hello world" and s.request_changes
    elif entry == "astream":
        async def main() -> None:
            client = anthropic.AsyncAnthropic(base_url=base_url, api_key="k", max_retries=0)
            async with mendstream.astream(client, **payload, sanitize=True) as s:
                assert await s.get_final_text() == "Hello world" and s.request_changes
            await client.close()

        asyncio.run(main())
    elif entry == "httpx":
        with mhttpx.stream(payload, base_url=base_url, sanitize=True) as s:
            assert s.get_final_text() == "Hello world" and s.request_changes
    else:
        changes: list[Any] = []
        if entry == "RepairTransport":
            transport = mendstream.RepairTransport(sanitize=True, on_request_change=changes.append)
            client = anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=0,
                                         http_client=http.Client(transport=transport))
            with client.messages.stream(**payload) as s:
                assert s.get_final_text() == "Hello world"
        else:
            async def amain() -> None:
                transport = mendstream.AsyncRepairTransport(sanitize=True, on_request_change=changes.append)
                client = anthropic.AsyncAnthropic(base_url=base_url, api_key="k", max_retries=0,
                                                  http_client=http.AsyncClient(transport=transport))
                async with client.messages.stream(**payload) as s:
                    assert await s.get_final_text() == "Hello world"
                await client.close()

            asyncio.run(amain())
        assert changes
    assert payload == before  # never the caller's objects
