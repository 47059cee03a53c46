# Transports open one attempt of a stream over something that moves bytes: `sdk` sends the request through an
# anthropic client, `httpx_client` (public as `mendstream.httpx`) through httpx or httpx2, `cloud` knows what
# the Bedrock and Vertex clients need. Each hands the stream machine (mendstream.streaming) an opener and
# nothing else: retries, stalls and continuations are decided there. What they share lives in modules named
# for it: `failures` (responses that cannot be streamed become HTTPStatusError / ContentTypeError), `pump`
# (body chunks into the stream, the capture tee, how an attempt is released) and `capturing` (starting a
# capture for a request). Nothing here imports an HTTP library or the SDK at import time.
from __future__ import annotations
