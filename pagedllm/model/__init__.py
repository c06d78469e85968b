"""Model classes (one decoder for the Llama / Mistral / Qwen2 / Qwen3 families), their
layers, the architecture registry and weight loaders."""
