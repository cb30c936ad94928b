"""Student SFT: chat-templated data with response-only loss, one DeepSpeed loop (full or LoRA),
launched by Ray Train (launch.py) or torchrun (__main__.py)."""
