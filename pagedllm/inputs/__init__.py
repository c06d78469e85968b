"""From user input to token ids: tokenizer loading, chat templates, prompt validation.

The prompt types are importable from here, as from ``vllm.inputs``."""

from pagedllm.inputs.prompts import PromptType, TextPrompt, TokensPrompt

__all__ = ["PromptType", "TextPrompt", "TokensPrompt"]
