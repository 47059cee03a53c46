# The public face of the package: about twenty names a user needs, each visible to dir(), help(), tab
# completion and mypy with its real type, none of them importing httpx or anthropic; every other name lives
# in its room, and the names mendstream exported before the rooms still work with a DeprecationWarning.
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import mendstream


def test_every_public_name_is_in_dir_and_documented_by_help() -> None:
    assert 15 <= len(mendstream.__all__) <= 25
    assert set(mendstream.__all__) <= set(dir(mendstream))
    code = ("import pydoc, sys, mendstream; text = pydoc.plain(pydoc.render_doc(mendstream)); "
            "print(all(name in text for name in mendstream.__all__)); "
            "print(sorted(m for m in ('httpx', 'httpx2', 'anthropic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["True", "[]"], out.stdout + out.stderr


def test_the_event_union_holds_every_event_class_restart_included() -> None:
    from typing import get_args

    from mendstream.core import events

    members = set(get_args(mendstream.Event))
    assert mendstream.RestartEvent in members
    assert {cls for name in events.__all__ if name.endswith("Event") and name != "Event"
            for cls in [getattr(events, name)]} <= members


@pytest.mark.parametrize("name", sorted(mendstream._MOVED))
def test_names_that_moved_to_their_room_still_work_with_a_warning(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"mendstream.{name} moved: import it from"):
        value = getattr(mendstream, name)
    module = __import__(mendstream._MOVED[name], fromlist=[name])
    assert value is getattr(module, name)
    assert name not in mendstream.__all__ and name not in dir(mendstream)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mendstream.nope  # noqa: B018


def test_mypy_sees_every_public_name_with_its_type(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent("""
        import mendstream

        reveal_type(mendstream.RepairTransport)
        reveal_type(mendstream.AsyncRepairTransport)
        reveal_type(mendstream.CachePlanner)
        reveal_type(mendstream.place_cache_breakpoints)
        reveal_type(mendstream.RestartEvent)
    """))
    stdout, stderr, _ = api.run([str(snippet), "--cache-dir", str(tmp_path / "cache"), "--follow-imports=silent"])
    revealed = [line.split("Revealed type is ")[1] for line in stdout.splitlines() if "Revealed type" in line]
    assert len(revealed) == 5 and not any('"Any"' in r for r in revealed), stdout + stderr
    assert "RepairTransport" in revealed[0] and "AsyncRepairTransport" in revealed[1]


@pytest.mark.parametrize("first", [None, 5, "claude-sonnet-4-5", {"model": "m"}], ids=repr)
@pytest.mark.parametrize("name", ["stream", "astream"])
def test_a_first_argument_that_is_not_a_client_is_a_usage_error(name: str, first: object) -> None:
    """Caught when called, before anything is sent, naming what was passed and what is accepted."""
    pytest.importorskip("anthropic")
    got = "None" if first is None else f"{type(first).__name__} {first!r}"
    with pytest.raises(mendstream.UsageError) as info:
        getattr(mendstream, name)(first, model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    message = str(info.value)
    assert message.startswith(f"mendstream.{name}() takes an ") and "SDK client" in message, message
    assert f"got {got}" in message, message


def test_a_client_of_the_wrong_kind_is_a_usage_error() -> None:
    anthropic = pytest.importorskip("anthropic")
    params = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(mendstream.UsageError, match=r"stream\(\) got an async client \(AsyncAnthropic\).*astream"):
        mendstream.stream(anthropic.AsyncAnthropic(api_key="k", base_url="http://127.0.0.1:9"), **params)
    with pytest.raises(mendstream.UsageError, match=r"astream\(\) got a sync client \(Anthropic\).*stream\(\)"):
        mendstream.astream(anthropic.Anthropic(api_key="k", base_url="http://127.0.0.1:9"), **params)
