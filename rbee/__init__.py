"""rbee: every machine you can ssh into, one OpenAI-compatible LLM endpoint."""

__version__ = "0.1.0"

__all__ = ["__version__"]
