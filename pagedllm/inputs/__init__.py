"""From user input to token ids: tokenizer loading, chat templates, prompt validation."""
