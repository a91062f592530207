"""Face detection parts in plain PyTorch (no Lightning): NMS, the image pyramid, the MTCNN cascade,
baselines and pictures."""
