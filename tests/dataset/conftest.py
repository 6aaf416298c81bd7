from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

CATS = [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}]


def make_source(folder: Path, n_train: int = 4, n_val: int = 2, n_pool: int = 2) -> Path:
    """A tiny dataset in the layout ``hitl synth`` writes."""
    (folder / "annotations").mkdir(parents=True)
    splits = {}
    next_id, ann_id = 1, 1
    for split, n in (("train", n_train), ("val", n_val), ("pool", n_pool)):
        (folder / "images" / split).mkdir(parents=True)
        images, anns = [], []
        for _ in range(n):
            name = f"{split}/{next_id:06d}.png"
            Image.new("RGB", (64, 48), (next_id * 20 % 255, 90, 30)).save(folder / "images" / name)
            images.append({"id": next_id, "file_name": name, "width": 64, "height": 48})
            if split != "pool":
                anns.append({"id": ann_id, "image_id": next_id, "category_id": 1 + next_id % 2,
                             "bbox": [4.0, 6.0, 20.0, 10.0], "area": 200.0, "iscrowd": 0})
                ann_id += 1
            next_id += 1
        splits[split] = {"images": images, "annotations": anns, "categories": CATS}
    for split, data in splits.items():
        (folder / "annotations" / f"{split}.json").write_text(json.dumps(data))
    return folder


@pytest.fixture
def source(tmp_path):
    return make_source(tmp_path / "src")
