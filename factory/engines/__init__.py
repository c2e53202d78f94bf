"""LLM engines behind one interface (see ``base``): local (llama.cpp), openai (any compatible server), vllm."""

from factory.engines.base import (  # noqa: F401
    BudgetExhausted,
    ChatRequest,
    ChatResponse,
    Engine,
    EngineUnavailable,
    engine_identity,
    make_engine,
)
