"""The local model's engine: llama.cpp in a supervised process of its own.

`process` starts, checks, watches and restarts it from the app; `worker` is the process
itself. Kept apart from `chatllm.backends` (which uses it) so that the process starts
without LangChain or Chainlit: importing that package costs ~2 s at every engine start.
"""
