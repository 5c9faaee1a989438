"""`coco_captions`: a COCO-format caption file and its image folder (several captions per
image), with optional labels from a JSON or CSV file.

    {"images": [{"id": 1, "file_name": "000001.jpg"}, ...],
     "annotations": [{"id": 10, "image_id": 1, "caption": "a dog on a sofa"}, ...]}

Each item's ``caption`` is its first caption and ``references`` all of them (caption metrics
score against every reference). Labels: ``{image id or file name: label}`` as JSON, or a CSV
with columns ``image`` and ``label``; without a labels file every image is of one class,
``image`` (for the captioner; classifiers need labels).
"""

from __future__ import annotations

from pathlib import Path

from lmvision.data import catalog
from lmvision.data.image_files import ImageFilesDataset


class CocoCaptionsDataset(ImageFilesDataset):
    """Args:
        captions_file: The COCO-format JSON.
        image_root: The folder of the images (``file_name`` is relative to it).
        labels_file: Optional labels (JSON or CSV).
        image_size: Side of the square images served (short side resized, centre crop).
        channels: 1 (grey) or 3 (RGB).
        on_bad_item: ``error`` or ``skip`` unreadable images.
        verify: Decode every image once when the dataset is built.
        cache_images: Keep the decoded, resized images in memory (small images).
    """

    def __init__(self, captions_file: str, image_root: str, image_size: int,
                 labels_file: str | None = None, channels: int = 3, on_bad_item: str = "error",
                 verify: bool = True, cache_images: bool = False) -> None:
        images, captions = catalog.coco_captions(captions_file)
        labels = catalog.coco_labels(labels_file, images)
        classes = sorted(set(labels.values())) if labels else ["image"]
        index = {name: i for i, name in enumerate(classes)}
        root = Path(str(image_root)).expanduser()
        super().__init__(
            [root / str(i["file_name"]) for i in images],
            [index[labels[str(i["id"])]] if labels else 0 for i in images], classes, image_size,
            channels, captions=[captions[i["id"]][0] for i in images],
            on_bad_item=on_bad_item, verify=verify, cache_images=cache_images,
            source=f"data.captions_file={captions_file}",
            where=[f"{captions_file} (image id {i['id']})" for i in images])
        self.references = [captions[images[i]["id"]] for i in self.kept]

    def __getitem__(self, index: int) -> dict:
        item = super().__getitem__(index)
        item["references"] = self.references[index]
        return item
