"""The engine protocol: generate a batch of chat requests; score candidate answers."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

from vlmexp.errors import EngineError
from vlmexp.messages import ChatRequest, Generation


class Engine(ABC):
    """A way to run a model. Engines are built with ``hydra.utils.instantiate(cfg.engine)``."""

    #: Whether :meth:`score` is available (log-probabilities of given answers).
    supports_scoring: bool = False
    #: Whether video inputs go to the model natively (else callers send frames as images).
    supports_video: bool = False
    #: Whether the engine holds the model in this process (so a run can fine-tune it first); such an
    #: engine is handed the fine-tuned model (``model``/``processor``) by the run's engine factory.
    trains_in_process: bool = False
    #: Whether there is a model to ask at all (``engine=none`` has none).
    serves_model: bool = True
    #: Config keys that change how requests are executed (batching, connections, retries), never what
    #: the model answers: left out of the run's fingerprint, so changing them reuses finished predictions.
    execution_keys: ClassVar[frozenset[str]] = frozenset({"batch_size"})

    @abstractmethod
    def generate(self, requests: Sequence[ChatRequest]) -> list[Generation]:
        """Answer each request; the result list is in the order of ``requests``."""

    def score(self, requests: Sequence[ChatRequest], candidates: Sequence[str]) -> list[list[float]]:
        """Log-probability of each candidate as the complete answer to each request."""
        raise EngineError(f"{type(self).__name__} cannot score candidate answers (no log-probabilities); "
                          "use an engine with supports_scoring, such as engine=hf")

    def preferred_batch_size(self) -> int:
        return 1

    @classmethod
    def identify(cls, run) -> dict[str, str]:
        """The identity of the model this engine would serve for ``run``, found without building the
        engine (the runner asks before the tracking run opens); empty when unknown."""
        return {}

    def model_identity(self) -> dict[str, str]:
        """The model as served: what changes when other weights stand behind the same name (a Hub
        commit, a checkpoint's hash, a server's model digest). Part of the key of cached predictions."""
        return {}

    def run_metrics(self) -> dict[str, float]:
        """Engine-level totals for the run (token counts, throughput), logged beside the task's."""
        return {}

    def close(self) -> None:
        """Release the model or the connection."""
