"""The names the server answers to (``--served-model-name``) and ``/v1/models``."""

from __future__ import annotations

import time

from pagedllm.entrypoints.openai.errors import OpenAIError
from pagedllm.entrypoints.openai.protocol import ModelCard, ModelList


class ServedModels:
    def __init__(self, names: list[str], root: str, max_model_len: int) -> None:
        if not names:
            raise ValueError("At least one served model name is needed.")
        self.names = names
        self.root = root
        self.max_model_len = max_model_len
        self.created = int(time.time())

    def resolve(self, requested: str | None) -> str:
        """The name to echo in responses; 404 for a model this server does not serve."""
        if requested is None or requested == "":
            return self.names[0]
        if requested in self.names:
            return requested
        raise OpenAIError(f"The model `{requested}` does not exist.", 404, "model")

    def list(self) -> ModelList:
        cards = [
            ModelCard(
                id=name, created=self.created, root=self.root, max_model_len=self.max_model_len
            )
            for name in self.names
        ]
        return ModelList(data=cards)
