"""Student SFT: chat-templated data with response-only loss, one DeepSpeed loop, Ray Train launch."""
