"""The worker: one model in one engine, serving the OpenAI API on loopback."""
