"""Stand-in for Forge Neo's backend/nn/llm/llama.py (its LLM text encoders): like Forge's t5, it binds
attention_pytorch under the name attention_function on purpose; arcattn must leave it alone."""
from backend.attention import attention_pytorch as attention_function  # noqa: F401
