"""rbee: every machine you can ssh into, one OpenAI-compatible LLM endpoint."""

import warnings

__version__ = "0.1.0"

__all__ = ["__version__"]

# Third-party warnings a user can do nothing about, silenced before any of rbee's modules imports
# the library that raises them (the test suite turns every warning into an error and ignores the
# same ones by name in pyproject.toml):
# - cryptography 47+ deprecates DSA, and asyncssh still names DSA key classes at import time (it
#   supports DSA keys for old servers). rbee never uses DSA keys.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh\.")
