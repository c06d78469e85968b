"""Structured outputs: a JSON schema, regex, choice, grammar or structural tag constrains
what a request may generate, through xgrammar's token bitmasks."""
