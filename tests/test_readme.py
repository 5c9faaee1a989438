"""Every command line in README.md runs as written (marked slow).

Each ``lmvision-train`` / ``lmvision-eval`` line of the README's shell blocks runs with a tiny
budget appended (``debug=fdr``), in a temporary directory; ``outputs/<run>`` is replaced by a
real run directory trained here. Lines that need a GPU or the network (a hub model name) are
composed instead (``--cfg job``): that checks every option they name.
"""

from __future__ import annotations

import re
import shlex
import shutil
import sys

import pytest
from conftest import ROOT, compose, run_cli, run_inline

pytestmark = pytest.mark.slow

ENTRY_POINTS = {".venv/bin/lmvision-train": "lmvision.train", ".venv/bin/lmvision-eval": "lmvision.evaluate",
                ".venv/bin/lmvision-explain": "lmvision.explain",
                ".venv/bin/lmvision-compare": "lmvision.compare",
                ".venv/bin/lmvision-prefetch": "lmvision.prefetch"}
NEEDS_GPU_OR_NETWORK = ("trainer=gpu", "bert-base-uncased", "weights=DEFAULT", "gpt2",
                        "trainer.num_nodes=2")  # the last: a GPU cluster


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.split(" ")[0] in ENTRY_POINTS]


def test_the_readme_has_commands_for_both_entry_points():
    commands = readme_commands()
    assert len(commands) >= 15
    assert {c.split(" ")[0] for c in commands} == set(ENTRY_POINTS)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from lmvision.train import train

    run = tmp_path_factory.mktemp("readme") / "run"
    train(compose(["data.num_images=300", "logger=csv", "debug=limit"], run))
    return run


@pytest.fixture(scope="module")
def named_runs(tmp_path_factory):
    """The runs the README names by kind: a pixel_lm_digits run, a judge for gen/acc (also the
    classifier that lmvision-explain pairs with a captioner), and a captioner_shapes run."""
    from lmvision.train import train

    base = tmp_path_factory.mktemp("readme-named")
    runs = {"<pixel_lm_digits run>": base / "pixel", "<judge run>": base / "judge",
            "<captioner_shapes run>": base / "captioner"}
    train(compose(["experiment=captioner_shapes", "data.image_size=16", "data.num_images=300",
                   "logger=csv", "debug=limit"], runs["<captioner_shapes run>"]))
    train(compose(["experiment=pixel_lm_digits", "logger=csv", "debug=limit",
                   "evaluation.samples.images=0"], runs["<pixel_lm_digits run>"]))
    train(compose(["data.image_size=16", "data.colors=distinct", "data.num_images=300",
                   "logger=csv", "debug=limit"], runs["<judge run>"]))
    return runs


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    """What `multirun/image_classifier` stands for: a real sweep, two backbones, two seeds."""
    sweep = tmp_path_factory.mktemp("readme-sweep") / "sweep"
    done = run_cli(["-m", "lmvision.train", "-m", "seed=0,1", "backbone=small_cnn,resnet18",
                    "data.num_images=300", "logger=csv", "debug=limit",
                    f"hydra.sweep.dir={sweep}"], cwd=sweep.parent, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def user_data(root):
    """Class folders of images and a captions.jsonl beside them, as the README shows."""
    import json

    from data_files import COLORS, write_images

    rows = []
    for name, color in COLORS.items():
        for path in write_images(root / name, n=6, color=color):
            rows.append({"image": str(path.relative_to(root)), "label": name,
                         "caption": f"a {name} patch"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command, trained_run, named_runs, request, tmp_path):
    if command.split(" ")[0].endswith("lmvision-compare"):
        command = command.replace("multirun/image_classifier",
                                  str(request.getfixturevalue("sweep_dir")))
    if "data=webdataset" in command:  # the README's shards: written here
        from data_files import webdataset_shards

        pattern = webdataset_shards(tmp_path / "shards")
        command = re.sub(r"data\.shards='[^']*'", f"data.shards='{pattern}'", command)
    if "/data/pets" in command:  # the README's own data: a folder and a JSONL written here
        command = command.replace("/data/pets", str(user_data(tmp_path / "pets")))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # a resume changes the run it continues: use a copy
    for name, path in named_runs.items():
        command = command.replace(f"outputs/{name}", str(path))
    words = shlex.split(command.replace("outputs/<run>", str(run)))
    args = ["-m", ENTRY_POINTS[words[0]], *words[1:]]
    if any(flag in words for flag in ("--help", "--cfg")) or words[0].endswith("lmvision-compare"):
        pass
    elif words[0].endswith("lmvision-prefetch"):  # no network here: what it would fetch
        args += [] if "--list" in words else ["--list"]
    elif words[0].endswith("lmvision-explain"):  # a few images; a folder of them where named
        from PIL import Image

        for word in words:
            if word.startswith("images=") and word != "images=test":
                folder = tmp_path / word.split("=", 1)[1]
                folder.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (16, 16), (200, 40, 40)).save(folder / "red.png")
        args += ["explain.limit=8", f"hydra.run.dir={tmp_path / 'out'}"]
    elif any(need in command for need in NEEDS_GPU_OR_NETWORK):
        # composed, not launched: --cfg job, which a sweep's -m does not take (so a swept
        # option is composed with its first value)
        args = args[:2] + [re.sub(r"^([^=\[]+)=([^,\[]*),.*$", r"\1=\2", a) for a in args[2:]
                           if a not in ("-m", "--multirun")] + ["--cfg", "job"]
    else:
        resume = any(w.startswith("ckpt_path=") for w in words) and "train=false" not in words \
            and words[0].endswith("lmvision-train")
        # a resume takes its run's config, tiny already (debug=limit), and may not change what
        # is learned: it trains one more epoch, in its run's directory
        args.append("trainer.max_epochs=2" if resume else "debug=fdr")
        if any(w.startswith("hparams_search=") for w in words):
            args.append("hydra.sweeper.n_trials=2")  # a search: two trials are enough here
        if not resume:
            args += [f"hydra.run.dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    # one process: run here (the imports paid once); processes of a sweep or DDP: launched
    own_processes = any("ddp" in w or w.startswith("hydra/launcher=") for w in words)
    result = (run_cli(args, cwd=tmp_path, timeout=900) if own_processes
              else run_inline(args, cwd=tmp_path))
    assert result.returncode == 0, f"{sys.executable} {' '.join(args)}\n{result.stderr[-3000:]}"
    if words[0].endswith("lmvision-compare"):
        assert "| backbone=resnet18 data.num_images=300 debug=limit | 2 |" in result.stdout
    elif words[0].endswith("lmvision-prefetch"):
        assert "(model, to fetch)" in result.stdout
    elif "--cfg" not in args and "--help" not in args:
        assert "Run directory:" in result.stdout or "jobs completed" in result.stdout


def test_readme_documents_what_the_code_offers():
    """Every config group and option named in the README's table exists, and vice versa."""
    text = (ROOT / "README.md").read_text()
    table = re.findall(r"^\| `(\w+)` \| (.*?) \|", text, flags=re.M)
    groups = {g: set(re.findall(r"`(\w+)`", options)) for g, options in table}
    assert set(groups) == {p.name for p in (ROOT / "conf").iterdir() if p.is_dir()}
    for group, documented in groups.items():
        present = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
        assert present <= documented, (group, present - documented)
