"""``lmvision-prefetch <overrides>``: fetch everything a run names, for compute nodes without
network.

Composes the training config of the same overrides a run will get, finds what it would
download (Hugging Face models and tokenizers, a hub dataset, CIFAR's files, torchvision
weights), fetches each into its usual cache on this machine (which has network), and writes a
manifest. A job on a node without network then runs from the cache with ``HF_HUB_OFFLINE=1``;
an item missing there fails with one line naming it and this command.

    lmvision-prefetch text_encoder=hf text_encoder.name_or_path=bert-base-uncased
    lmvision-prefetch experiment=aux_text_shapes descriptions=language_model --list

``--list`` only prints what would be fetched. The manifest (``--manifest``, default
``<cache dir>/prefetch-manifest.json``) lists each item, the option that names it, and what
happened: ``fetched``, ``local`` (a path on disk: nothing to fetch) or ``failed`` with the
reason. Exit status: 0 when nothing failed, 1 when an item could not be fetched, 2 for a
mistake in the overrides.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lmvision.run.cli import exit_with_error, user_message


@dataclass
class Item:
    kind: str        # model | dataset | cifar | torchvision_weights
    name: str        # hub id, dataset name, folder, or model:weights
    option: str      # the config option that names it
    revision: str | None = None   # a hub revision (or CIFAR's variant)
    status: str = "pending"
    detail: str = ""


def compose(overrides: list[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    import lmvision.config  # noqa: F401  (resolvers)
    from lmvision.config import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = hydra_compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def select(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None, throw_on_missing=False)


def needed(cfg: DictConfig) -> list[Item]:
    """What a run of ``cfg`` would download: every class the run builds (its strategy and
    network, its inputs' text side, its data) says what it downloads, as ``downloads``: pairs of
    a kind and the option naming the thing (with the option of its revision, if any)."""
    from hydra.utils import get_object

    from lmvision.config.validate import source_of

    items: dict[tuple[str, str, str], Item] = {}  # one per option naming a thing

    def visit(node: Any, path: str) -> None:
        if isinstance(node, DictConfig):
            target = node.get("_target_")
            if target:
                for kind, key, revision in getattr(get_object(target), "downloads", ()):
                    add(node, path, kind, key, revision)
            for key in node:
                if not str(key).startswith("_"):
                    visit(node.get(key), f"{path}.{key}")

    def add(node: DictConfig, path: str, kind: str, key: str, revision: str | None) -> None:
        name = node.get(key)
        if not name:
            return
        extra = node.get(revision) if revision else None
        if kind == "torchvision_weights":
            name, extra = f"{node.get('name')}:{name}", None
        item = Item(kind, str(name), source_of(cfg, f"{path}.{key}"),
                    str(extra) if extra is not None else None)
        # nodes that take it from one option (a text encoder and its tokenizer) list it once;
        # two options naming the same model (a caption decoder and its tokenizer) list both
        items.setdefault((item.kind, item.name, item.option), item)

    for section in ("inputs", "strategy", "data"):
        visit(select(cfg, section), section)
    return list(items.values())


def is_local(item: Item) -> bool:
    return item.kind in ("model", "dataset") and Path(item.name).expanduser().exists()


def fetch(item: Item) -> None:
    """Fetch one item into its cache; sets ``status`` and ``detail``."""
    if is_local(item):
        item.status, item.detail = "local", str(Path(item.name).expanduser().resolve())
        return
    try:
        if item.kind == "model":
            from huggingface_hub import snapshot_download

            item.detail = snapshot_download(item.name, revision=item.revision)
        elif item.kind == "dataset":
            import datasets

            datasets.load_dataset(item.name, revision=item.revision)
            item.detail = str(datasets.config.HF_DATASETS_CACHE)
        elif item.kind == "cifar":
            from lmvision.data.cifar import fetch as fetch_cifar

            fetch_cifar(Path(item.name).expanduser(), str(item.revision))
            item.detail = str(Path(item.name).expanduser().resolve())
        elif item.kind == "torchvision_weights":
            import torchvision

            name, weights = item.name.split(":", 1)
            enum = torchvision.models.get_model_weights(name)
            chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
            chosen.get_state_dict(progress=False)
            item.detail = str(Path(torchvision.__file__).parent)
        item.status = "fetched"
    except Exception as e:  # noqa: BLE001 - every failure is reported per item, then summed up
        item.status = "failed"
        item.detail = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lmvision-prefetch", description="Fetch what a run names, for nodes without network.")
    parser.add_argument("overrides", nargs="*", help="the run's overrides, as for lmvision-train")
    parser.add_argument("--list", action="store_true", help="only print what would be fetched")
    parser.add_argument("--manifest", type=Path, default=None,
                        help="where to write the manifest (default: <cache dir>/prefetch-manifest.json)")
    args = parser.parse_args(argv)
    try:
        cfg = compose(args.overrides)
        items = needed(cfg)
        cache = Path(str(select(cfg, "paths.cache_dir") or "."))
    except Exception as err:  # noqa: BLE001 - a mistake in the overrides: one line, exit 2
        message = user_message(err)
        if message is None:
            raise
        exit_with_error(message)
    if not items:
        print("lmvision-prefetch: this run downloads nothing (everything it names is local or "
              "shipped with lmvision)")
    for item in items:
        if args.list:
            where = "local" if is_local(item) else "to fetch"
            print(f"{item.option}={item.name} ({item.kind}, {where})")
            continue
        fetch(item)
        print(f"{item.option}={item.name}: {item.status}"
              + (f" ({item.detail})" if item.detail else ""), flush=True)
    if args.list:
        return
    from lmvision.files import write_json

    manifest = args.manifest or cache / "prefetch-manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    write_json(manifest, {"overrides": args.overrides, "items": [asdict(i) for i in items]})
    print(f"Manifest: {manifest}")
    failed = [i for i in items if i.status == "failed"]
    if failed:
        print(f"lmvision-prefetch: {len(failed)} of {len(items)} items could not be fetched "
              "(see above); run it on a machine with network", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
