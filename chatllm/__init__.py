"""chatllm: a self-hosted chat app for local llama.cpp models and OpenAI-compatible endpoints."""

__version__ = "0.1.0"
