"""Stand-in for the part of Forge's backend/modules/k_model.py that arcattn affects: the inference-memory
factor is picked by identity of attention.attention_function (hosts.md: pytorch/xformers 1.28, others 1.65)."""
from backend import attention


def memory_factor():
    if attention.attention_function in [attention.attention_pytorch, attention.attention_xformers]:
        return 1.28
    return 1.65
