"""router-ml: a learned, cost-aware LLM router."""

__version__ = "0.1.0"
