"""The Python API for a fine-tuned (or any) model: ``vlm = vlmexp.load_vlm(checkpoint_dir or run_id)``.

``answer_question`` and ``describe_object`` build the same requests ``task=vqa`` evaluates with (the run's
system prompt and answer cap) and answer them through the same engine (``engine=hf`` with the run's model
family, hardware placement and adapter), so the model is asked as it was trained and evaluated.
``describe_object`` asks the question ``task=annotate``'s description template writes (``Describe the
{label} at {box}.``, the box in the model's ``model.box_format``), the one its training pairs asked."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vlmexp.annotation.qa import Description
from vlmexp.data.images import UnreadableImage, open_image
from vlmexp.errors import ConfigError, DataError
from vlmexp.runner import RunContext, build
from vlmexp.tasks.vqa import VQATask
from vlmexp.tracking.base import Tracker

HF_ENGINE = {"_target_": "vlmexp.engines.hf.HFEngine", "batch_size": 8, "max_new_tokens": 96}


class VLM:
    """A loaded model. Each method takes one image (a path or a PIL image) or a list, and answers in kind."""

    def __init__(self, engine, cfg: DictConfig, describe_prompt: str | None = None):
        self.engine, self.cfg = engine, cfg
        self.task = VQATask(system_prompt=cfg.task.get("system_prompt"),
                            max_new_tokens=int(cfg.task.get("max_new_tokens") or 64))
        description = OmegaConf.select(cfg, "task.qa_templates.description.question")
        self.describe_prompt = describe_prompt or description or Description().question
        box_node = cfg.model.get("box_format")
        self.box_format = build(box_node) if box_node else None

    def answer_question(self, image: Any, question: str | Sequence[str]) -> str | list[str]:
        if isinstance(image, (list, tuple)):
            return self._ask([_image(i) for i in image], list(question))
        return self._ask([_image(image)], [question])[0]

    def describe_object(self, image: Any, bbox: Sequence[float] | Sequence[Sequence[float]],
                        label: str | Sequence[str]) -> str | list[str]:
        """What the model says about the object in ``bbox`` (pixels ``[x1, y1, x2, y2]``) of class ``label``."""
        if isinstance(image, (list, tuple)):
            images = [_image(i) for i in image]
            return self._ask(images, [self._describe(img, b, lb) for img, b, lb in zip(images, bbox, label)])
        img = _image(image)
        return self._ask([img], [self._describe(img, bbox, label)])[0]

    def _describe(self, image, bbox, label: str) -> str:
        if self.box_format is None:
            raise ConfigError(f"model.box_format: model={self.cfg.model.name} names no box convention")
        return self.describe_prompt.format(label=label, box=self.box_format.box([float(v) for v in bbox], image.size))

    def _ask(self, images: list, questions: list[str]) -> list[str]:
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        answers = self.engine.generate([self.task.request(img, q) for img, q in zip(images, questions)])
        return [a.text.strip() for a in answers]

    def close(self) -> None:
        self.engine.close()


def _image(image):
    if isinstance(image, (str, Path)):
        try:
            return open_image(image)
        except UnreadableImage as exc:
            raise DataError(str(exc)) from None
    return image.convert("RGB")


def load_vlm(source: str | Path, *, model: str | None = None, overrides: Sequence[str] = (),
             describe_prompt: str | None = None, tracking_uri: str | None = None) -> VLM:
    """A fine-tuned checkpoint folder (``<cache>/runs/<task>/<key>/checkpoint``; the run's config is read
    beside it, or composed with ``model=`` and ``overrides``) or the id of the MLflow run that trained it
    (its logged config and checkpoint)."""
    path = Path(source).expanduser()
    if path.is_dir():
        checkpoint, cfg = path, _folder_config(path, model, overrides)
    else:
        checkpoint, cfg = _from_mlflow(str(source), tracking_uri)
    if not OmegaConf.select(cfg, "engine._target_", default="").endswith("HFEngine"):
        cfg.engine = OmegaConf.create(HF_ENGINE)  # the checkpoint runs in this process
    run = RunContext(cfg, Path(tempfile.mkdtemp(prefix="vlmexp-api-")), checkpoint.parent, Tracker(), "",
                     checkpoint=str(checkpoint))
    return VLM(run.build_engine(), cfg, describe_prompt)


def _folder_config(checkpoint: Path, model: str | None, overrides: Sequence[str]) -> DictConfig:
    saved = checkpoint.parent / "resolved_config.yaml"
    if saved.is_file() and model is None:
        return OmegaConf.merge(OmegaConf.load(saved), OmegaConf.from_dotlist(list(overrides)))
    if model is None:
        raise ConfigError(f"{checkpoint}: no resolved_config.yaml beside it; give the model family, "
                          "load_vlm(folder, model='qwen2_5_vl_3b')")
    from hydra import compose, initialize_config_dir

    from vlmexp.config.schema import register_configs
    from vlmexp.paths import conf_dir

    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=["task=vqa", f"model={model}", *overrides])


def _from_mlflow(run_id: str, tracking_uri: str | None) -> tuple[Path, DictConfig]:
    import mlflow

    from vlmexp.tracking.mlflow_tracker import default_tracking_uri

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
    except Exception:
        raise ConfigError(f"{run_id}: neither a checkpoint folder nor a run in the MLflow store {uri}") from None
    where = Path(tempfile.mkdtemp(prefix="vlmexp-api-"))
    cfg = OmegaConf.load(client.download_artifacts(run_id, "resolved_config.yaml", str(where)))
    local = run.data.tags.get("vlmexp.checkpoint_dir")
    if local and Path(local).is_dir():
        return Path(local), cfg
    try:
        return Path(client.download_artifacts(run_id, "checkpoint", str(where))), cfg
    except Exception:
        raise ConfigError(f"MLflow run {run_id} logged no checkpoint (was it a training run?)") from None
