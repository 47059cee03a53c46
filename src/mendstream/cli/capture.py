# `mendstream capture BODY.json`: make a real streaming request and save the response as a fixture (secrets
# scrubbed), with its sidecar.
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from mendstream.cli.common import EXIT_FAILED, EXIT_OK, CLIError, input_file, output_file, read_json
from mendstream.errors import UsageError

__all__ = ["add_subcommand"]


def _parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise CLIError(f"bad header {text!r}; use 'name: value'")
    return name.strip(), value.strip()


def cmd_capture(args: argparse.Namespace) -> int:
    import mendstream.httpx as transport
    from mendstream.errors import StreamError
    from mendstream.recording.capture import sidecar_path

    body_path = input_file(Path(args.body), "request body file", expected="a JSON request body file")
    body = read_json(body_path, "a Messages API request body")
    if not isinstance(body, dict):
        raise CLIError(f"{body_path} must hold a JSON object (a Messages API request body)")
    output = output_file(Path(args.output) if args.output else body_path.with_suffix(".sse"), "capture.sse")
    api_key = auth_token = None
    if not args.no_auth:
        if args.auth_token_env:
            auth_token = os.environ.get(args.auth_token_env)
            if not auth_token:
                raise CLIError(f"environment variable {args.auth_token_env} is not set")
        else:
            api_key = os.environ.get(args.api_key_env)
            if not api_key:
                raise CLIError(
                    f"environment variable {args.api_key_env} is not set; export your API key there, name "
                    "another variable with --api-key-env / --auth-token-env, or pass --no-auth"
                )
    headers = dict(_parse_header(h) for h in args.header)
    base_url = args.base_url or os.environ.get("ANTHROPIC_BASE_URL") or transport.DEFAULT_BASE_URL
    try:
        stream = transport.stream(
            body,
            base_url=base_url,
            api_key=api_key,
            auth_token=auth_token,
            headers=headers,
            capture=output,
            strict_content_type=False,
        )
    except transport.HTTPStatusError as exc:
        print(f"mendstream capture: {exc}; the error response was saved to {output}", file=sys.stderr)
        return EXIT_FAILED
    except transport.ContentTypeError as exc:
        print(f"mendstream capture: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except UsageError:
        raise
    except Exception as exc:  # connect errors, timeouts: the HTTP library's own classes
        reason = f"{type(exc).__name__}: {exc}"
        print(f"mendstream capture: request to {base_url} failed: {reason}", file=sys.stderr)
        return EXIT_FAILED
    status = EXIT_OK
    try:
        with stream:
            for text in stream.text_stream:
                if args.print:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            stream.until_done()
        if args.print:
            sys.stdout.write("\n")
    except StreamError as exc:
        reason = f"{type(exc).__name__}: {exc}"
        print(f"mendstream capture: the stream failed ({reason}); captured anyway", file=sys.stderr)
        status = EXIT_FAILED
    size = output.stat().st_size if output.exists() else 0
    print(f"captured {size} bytes to {output} (sidecar {sidecar_path(output)})", file=sys.stderr)
    return status



def add_subcommand(sub: Any) -> None:
    p = sub.add_parser(
        "capture",
        help="make a real streaming request and save the response as a fixture",
        description="Send the Messages API request in BODY (a JSON file) with \"stream\": true and save the "
        "exact response bytes to OUTPUT (default: BODY with .sse) plus a .capture.json sidecar. The API key "
        "is read from the environment and never written.",
    )
    p.add_argument("body", help="JSON file with the request body")
    p.add_argument("-o", "--output", help="where to write the .sse fixture (a file name)")
    p.add_argument("--base-url", help="endpoint (default: $ANTHROPIC_BASE_URL or https://api.anthropic.com)")
    p.add_argument("--api-key-env", default="ANTHROPIC_API_KEY", help="variable holding the x-api-key")
    p.add_argument("--auth-token-env", help="variable holding a bearer token (instead of an API key)")
    p.add_argument("--no-auth", action="store_true", help="send no credential (local servers)")
    p.add_argument("-H", "--header", action="append", default=[], help="extra header 'name: value'")
    p.add_argument("--print", action="store_true", help="print the text as it streams")
    p.set_defaults(func=cmd_capture)
