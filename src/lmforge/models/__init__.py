"""The model zoo, model loading and safety checks, from-config models, LoRA, GGUF conversion."""
