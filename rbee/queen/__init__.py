"""The queen: the OpenAI endpoint, the worker registry and scheduler, and the hives it runs."""
