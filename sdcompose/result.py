"""What a generation returns: images, their metadata, and how to save them."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdcompose.metadata import save_png


@dataclass
class Result:
    images: list[Image.Image]
    metadata: dict[str, Any]  # shared by the batch; ``seeds`` lists each image's seed
    per_image: list[dict[str, Any]] = field(default_factory=list)  # full metadata of each image
    arrays: list[np.ndarray] = field(default_factory=list)  # float32 HxWx3 in [0, 1], before 8-bit rounding
    inputs: dict[str, Image.Image] = field(default_factory=dict)  # control maps, init image, mask

    def save(self, path: str | Path) -> list[Path]:
        """Write PNGs with metadata; ``out.png`` for one image, ``out-1.png``... for a batch."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            path = path.with_suffix(".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        if len(self.images) == 1:
            targets = [path]
        else:
            targets = [path.with_name(f"{path.stem}-{i + 1}{path.suffix}") for i in range(len(self.images))]
        return [save_png(image, meta, self.inputs, target)
                for image, meta, target in zip(self.images, self.per_image, targets)]
