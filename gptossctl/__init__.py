"""gptossctl: put gpt-oss into production on air-gapped networks, served by vLLM under systemd."""

from __future__ import annotations

__version__ = "0.1.0"
