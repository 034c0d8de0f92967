"""Wire types shared by every role: the OpenAI schema, SSE framing, HTTP helpers and clients."""
