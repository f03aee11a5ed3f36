"""What a classifier on a VLM backbone takes as input and how its head is shaped.

Kept free of torch so that tasks can check their config without the heavy imports.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from vlmexp.errors import ConfigError
from vlmexp.messages import ChatRequest, ImagePart, TextPart, chat

POOLINGS = ("mean", "last")


@dataclass(frozen=True)
class HeadConfig:
    """``Linear(hidden, hidden_dim) -> ReLU -> Dropout(dropout) -> Linear(hidden_dim, classes)`` on the
    backbone's last hidden states, pooled over the attention mask (``mean``) or taken at the last
    real token (``last``)."""

    hidden_dim: int = 512
    dropout: float = 0.1
    pooling: str = "mean"

    @classmethod
    def from_mapping(cls, values: Mapping | None, key: str = "task.head") -> HeadConfig:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        for name in values:
            if name not in known:
                raise ConfigError(f"{key}.{name}: unknown key (known keys: {', '.join(sorted(known))})")
        head = cls(**values)
        if head.pooling not in POOLINGS:
            raise ConfigError(f"{key}.pooling={head.pooling}: expected one of {', '.join(POOLINGS)}")
        if not isinstance(head.hidden_dim, int) or head.hidden_dim < 1:
            raise ConfigError(f"{key}.hidden_dim={head.hidden_dim}: must be a positive integer")
        if not 0.0 <= float(head.dropout) < 1.0:
            raise ConfigError(f"{key}.dropout={head.dropout}: must be in [0, 1)")
        return head

    def to_dict(self) -> dict:
        return asdict(self)


def classification_request(image, text: str) -> ChatRequest:
    """The one request form a classifier sees, in training and in prediction alike: the image, then the text."""
    return ChatRequest(chat(None, ImagePart(image), TextPart(text)))
