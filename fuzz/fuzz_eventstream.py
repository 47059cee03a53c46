"""Fuzz target for the event-stream decoder and the parser over event-stream framing (explicit and "auto"):
whatever the bytes and however they are split, the decoder returns frames or raises EventStreamError, the
parser returns events or raises a StreamError, and nothing else escapes. `fuzz_one` is called by tests/test_eventstream.py (hypothesis);
run it under atheris for longer campaigns:

    PYTHONPATH=src python fuzz/fuzz_eventstream.py -max_total_time=600
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # under atheris: instrument mendstream as it is imported, for coverage feedback
    import atheris

    with atheris.instrument_imports(include=["mendstream"]):
        from mendstream.core.bedrock import exception_frame, sse_to_event_stream
        from mendstream.core.eventstream import EventStreamDecoder
        from mendstream.core.parser import MessageParser
        from mendstream.errors import EventStreamError, StreamError
else:
    from mendstream.core.bedrock import exception_frame, sse_to_event_stream
    from mendstream.core.eventstream import EventStreamDecoder
    from mendstream.core.parser import MessageParser
    from mendstream.errors import EventStreamError, StreamError

_SEED_SSE = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant",'
    b'"model":"x","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"tool_use",'
    b'"id":"t","name":"f","input":{}}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta",'
    b'"partial_json":"{\\"a\\": [1, \\"x"}}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":2}}\n\n'
)
SEED = sse_to_event_stream(_SEED_SSE) + exception_frame("throttlingException", "slow down")


def _pieces(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)] or [b""]


def fuzz_one(data: bytes) -> None:
    """One fuzz case. The first byte picks the chunk size and whether the rest is used as it is or as a
    mutation of a valid Bedrock body (bytes XORed over it), so the fuzzer reaches past the prelude CRC."""
    if not data:
        return
    control, rest = data[0], data[1:]
    if control & 0x80:
        body = bytearray(SEED)
        for i, byte in enumerate(rest):
            body[(i * 131 + byte) % len(body)] ^= byte
        rest = bytes(body[: len(body) - (control & 0x07) * 3])
    step = (control & 0x3F) + 1

    decoder = EventStreamDecoder(max_frame_bytes=4096)
    try:
        for piece in _pieces(rest, step):
            decoder.feed(piece)
        decoder.end()
    except EventStreamError:
        pass

    for framing in ("event-stream", "auto"):
        parser = MessageParser(framing=framing, max_frame_bytes=4096)
        try:
            for piece in _pieces(rest, step):
                parser.feed(piece)
            parser.end()
        except StreamError:
            pass


def main() -> None:  # pragma: no cover - run by hand under atheris
    import atheris

    atheris.Setup(sys.argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    main()
