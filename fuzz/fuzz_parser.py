# Coverage-guided fuzz target for the parser: MessageParser over arbitrary bytes, split arbitrarily. The
# contract it asserts is the library's: any input either parses or raises a StreamError subclass, never an
# "internal error" ProtocolError (a bug wrapped by the parser); the outcome does not depend on how the
# bytes were split; and the work stays within a budget linear in the input. `check` is shared with the test
# suite (tests/test_hostile.py), so the contract is asserted even where atheris is not installed.
#
#   python fuzz/fuzz_parser.py [libFuzzer options] CORPUS_DIR...      (needs the `fuzz` extra: atheris)
#   fuzz/run.sh SECONDS                                                 (builds the seed corpus, then runs)
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT / "src") not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(_ROOT / "src"))

__all__ = ["ContractViolation", "check", "encode_input", "decode_input", "seed_inputs"]

# Work budget for one input, in CPU seconds: a fixed allowance (interpreter warm-up, the first regex
# compilations) plus a per-byte one far above the parser's real cost (~1-5 us per byte even fed byte by
# byte), so only super-linear work or a hang can exceed it.
BUDGET_FIXED_SECONDS = 2.0
BUDGET_SECONDS_PER_BYTE = 200e-6

_MAX_CUTS = 15


class ContractViolation(AssertionError):
    """The parser broke its contract on one input; the message says how."""


def encode_input(body: bytes, cuts: list[int] | None = None, *, byte_by_byte: bool = False) -> bytes:
    """The fuzz input that feeds ``body`` cut at ``cuts`` (or one byte at a time). Inverse of decode_input."""
    cuts = (cuts or [])[:_MAX_CUTS]
    header = bytes([len(cuts) | (0x10 if byte_by_byte else 0)])
    return header + b"".join((cut & 0xFFFF).to_bytes(2, "little") for cut in cuts) + body


def decode_input(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a fuzz input into (body, chunks): the first byte says how many 16-bit cut points follow (low 4
    bits) and whether to feed byte by byte (0x10); the rest is the stream body. Every input is valid."""
    if not data:
        return b"", []
    header, rest = data[0], data[1:]
    count = min(header & 0x0F, len(rest) // 2)
    points = sorted({int.from_bytes(rest[2 * k : 2 * k + 2], "little") for k in range(count)})
    body = rest[2 * count :]
    if header & 0x10:
        return body, [body[i : i + 1] for i in range(len(body))]
    chunks, start = [], 0
    for point in points:
        cut = min(point, len(body))
        chunks.append(body[start:cut])
        start = max(start, cut)
    chunks.append(body[start:])
    return body, chunks


def _outcome(chunks: list[bytes]) -> tuple[str, Any]:
    # Imported here, not at the top, so that the fuzzer can import mendstream under instrumentation first.
    from mendstream import MessageParser, ProtocolError, StreamError

    parser = MessageParser()
    try:
        for chunk in chunks:
            parser.feed(chunk)
        parser.end()
    except StreamError as exc:
        if isinstance(exc, ProtocolError) and str(exc).startswith("internal error"):
            raise ContractViolation(f"internal error: {exc!s} (cause {exc.__cause__!r})") from exc
        return type(exc).__name__, None
    except Exception as exc:  # the contract: nothing but StreamError escapes
        raise ContractViolation(f"{type(exc).__name__} escaped the parser: {exc!r}") from exc
    return "ok", parser.message


def check(data: bytes, *, time_budget: bool = True) -> None:
    """Assert the parser's contract on one fuzz input (see decode_input). Raises ContractViolation.

    With ``time_budget``, the input fed whole and fed in its chunks must each finish within
    BUDGET_FIXED_SECONDS + BUDGET_SECONDS_PER_BYTE * len(body) of CPU time.
    """
    body, chunks = decode_input(data)
    budget = BUDGET_FIXED_SECONDS + BUDGET_SECONDS_PER_BYTE * len(body)
    start = time.process_time()
    whole = _outcome([body])
    middle = time.process_time()
    split = _outcome(chunks)
    end = time.process_time()
    if time_budget and max(middle - start, end - middle) > budget:
        raise ContractViolation(
            f"{len(body)} bytes took {middle - start:.2f}s whole and {end - middle:.2f}s in {len(chunks)} "
            f"chunks, over the budget of {budget:.2f}s"
        )
    if whole != split:
        raise ContractViolation(f"outcome depends on the split: whole {whole!r}, in chunks {split!r}")


def seed_inputs(root: Path = _ROOT) -> dict[str, bytes]:
    """Seed corpus: every bundled fixture (src/mendstream/fixtures/*.sse) stream up to 64 KiB fed whole, in three chunks, and byte by byte
    (up to 4 KiB)."""
    seeds: dict[str, bytes] = {}
    for path in sorted((root / "src" / "mendstream" / "fixtures").glob("*.sse")):
        body = path.read_bytes()
        if len(body) > 65536:
            continue
        seeds[f"{path.stem}.whole"] = encode_input(body)
        seeds[f"{path.stem}.thirds"] = encode_input(body, [len(body) // 3, 2 * len(body) // 3])
        if len(body) <= 4096:
            seeds[f"{path.stem}.bytes"] = encode_input(body, byte_by_byte=True)
    return seeds


def _test_one_input(data: bytes) -> None:
    check(data)


def main(argv: list[str]) -> None:
    if len(argv) > 2 and argv[1] == "--write-seeds":
        out = Path(argv[2])
        out.mkdir(parents=True, exist_ok=True)
        for name, data in seed_inputs().items():
            (out / name).write_bytes(data)
        print(f"fuzz_parser: wrote {len(list(out.iterdir()))} seed inputs to {out}")
        return
    try:
        import atheris  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        print("fuzz_parser: atheris is not installed (pip install 'mendstream[fuzz]'); skipping")
        return
    with atheris.instrument_imports(include=["mendstream"]):
        import mendstream.core.parser  # noqa: F401  (coverage feedback comes from mendstream's own code)
    atheris.Setup(argv, _test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
