"""Stand-in for Forge's backend/nn/t5.py: the text encoder binds attention_pytorch under the name
attention_function on purpose (whatever attention the user chose); arcattn must leave it alone."""
from backend.attention import attention_pytorch as attention_function  # noqa: F401
