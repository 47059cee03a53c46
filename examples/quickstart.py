"""Quick start: `mendstream.stream()` where you had `client.messages.stream()`.

Offline, against the fixtures that ship with mendstream:

    mendstream serve &          # prints base_url: http://127.0.0.1:8765
    ANTHROPIC_BASE_URL=http://127.0.0.1:8765 ANTHROPIC_API_KEY=test python examples/quickstart.py

With a real key, leave ANTHROPIC_BASE_URL unset. The code below is the README's quick start.
"""

import anthropic, mendstream

client = anthropic.Anthropic()
with mendstream.stream(client, model="claude-sonnet-4-5", max_tokens=1024,
                       messages=[{"role": "user", "content": "Hello"}]) as stream:
    for text in stream.text_stream:
        print(text, end="", flush=True)
    message = stream.get_final_message()     # anthropic.types.Message, as from the SDK
print()
print(stream.repairs)                         # what was mended, if anything
