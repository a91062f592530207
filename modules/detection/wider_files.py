"""WIDER FACE prediction files, as the official evaluation reads them: one text file per image under a
folder per event, holding the image name, the number of faces and one ``x y w h score`` line each."""
from __future__ import annotations

from pathlib import Path


def write_wider_predictions(folder: str | Path, event: str, scenes) -> list[Path]:
    """One file ``<folder>/<event>/<key>.txt`` per scene (``SceneDetections``); returns the paths."""
    folder = Path(folder) / event
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for scene in scenes:
        lines = [scene.key, str(len(scene.scores))]
        for (x0, y0, x1, y1), score in zip(scene.boxes.tolist(), scene.scores.tolist()):
            lines.append(f"{x0:.1f} {y0:.1f} {x1 - x0:.1f} {y1 - y0:.1f} {score:.4f}")
        path = folder / f"{scene.key.replace('/', '_')}.txt"
        path.write_text("\n".join(lines) + "\n")
        written.append(path)
    return written
