"""Datasets (one file each), the datamodule and the batch collate.

Nothing heavy is imported here: configs name classes by full path
(`lmvision.data.shapes.ShapesDataset`), and `lmvision.data.spec` stays importable without torch.
"""
