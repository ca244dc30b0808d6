"""kakehashi: a self-hosted, OpenAI-compatible LLM API platform."""
