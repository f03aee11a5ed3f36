"""Detector checkpoints built offline from small configs: an ultralytics YOLOv8n with two classes (from its
model YAML, random weights, saved as ``.pt``) and a small transformers RT-DETR saved to model and processor
folders, as seed 003 keeps them."""

from __future__ import annotations

from pathlib import Path

CLASSES = {0: "glass", 1: "plastic"}


def build_yolo_weights(folder: Path) -> Path:
    """An ultralytics YOLOv8n detector with two classes, random weights, built from its model YAML: best.pt
(and classifier.pt, a YOLOv8n-cls, and junk.pt, not a checkpoint) in ``folder``."""
    from ultralytics import YOLO

    build_yolo_detector(folder / "best.pt", CLASSES)
    YOLO("yolov8n-cls.yaml").save(str(folder / "classifier.pt"))
    (folder / "junk.pt").write_text("not a checkpoint")
    return folder


def build_yolo_detector(path: Path, classes: dict[int, str], seed: int = 0) -> Path:
    """A YOLOv8n detector of ``classes`` with random weights (seeded), built from its model YAML, saved at ``path``."""
    import torch
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    path.parent.mkdir(parents=True, exist_ok=True)
    spec = yaml_model_load("yolov8n.yaml")
    spec["nc"] = len(classes)
    spec.pop("yaml_file", None)
    spec_file = path.with_name(f"{path.stem}-yolov8n.yaml")
    spec_file.write_text(yaml.safe_dump(spec))
    torch.manual_seed(seed)
    model = YOLO(str(spec_file))
    model.model.names = dict(classes)
    model.save(str(path))
    return path


def build_rtdetr_folders(folder: Path) -> tuple[Path, Path]:
    """A small RT-DETR (ResNet backbone of a few channels) saved as seed 003 keeps it: model m/, processor p/."""
    import torch
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig

    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(backbone_config=backbone, num_labels=2, id2label=dict(CLASSES),
                          label2id={"glass": 0, "plastic": 1}, d_model=32, encoder_hidden_dim=32,
                          encoder_in_channels=[16, 32, 64], decoder_in_channels=[32, 32, 32], encoder_ffn_dim=64,
                          decoder_ffn_dim=64, decoder_layers=1, encoder_layers=1, num_queries=20,
                          decoder_attention_heads=2, encoder_attention_heads=2, num_denoising=0)
    torch.manual_seed(0)
    RTDetrForObjectDetection(config).save_pretrained(folder / "m")
    RTDetrImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder / "p")
    return folder / "m", folder / "p"
