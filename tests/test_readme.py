"""Every command line in README.md runs as written (marked slow).

Each ``lmvision-train`` / ``lmvision-eval`` line of the README's shell blocks runs with a tiny
budget appended (``debug=fdr``), in a temporary directory; ``outputs/<run>`` is replaced by a
real run directory trained here. Lines that need a GPU or the network (a hub model name) are
composed instead (``--cfg job``): that checks every option they name. Some lines get closer
checks and a budget that leaves real checkpoints (``debug=limit``): those that train the runs
other lines name (``PRODUCED_BY``), the six-job sweep that the lmvision-compare lines read
(``SWEEP``), and the DDP run, the sweep of DDP jobs and the local_jobs sweep (``CHECKED``)."""

from __future__ import annotations

import json
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


# The runs the README names by kind (`outputs/<... run>`), each trained once for the module by
# the README line that makes it, with this budget (that line's test checks it ran): a
# pixel_lm_digits run, a judge for gen/acc (also the classifier that lmvision-explain pairs
# with a captioner) and a captioner_shapes run
PRODUCED_BY = {
    "<captioner_shapes run>": (".venv/bin/lmvision-train experiment=captioner_shapes",
                               ["data.image_size=16", "data.num_images=300", "logger=csv",
                                "debug=limit"]),
    "<pixel_lm_digits run>": (".venv/bin/lmvision-train experiment=pixel_lm_digits",
                              ["logger=csv", "debug=limit", "evaluation.samples.images=0"]),
    "<judge run>": (".venv/bin/lmvision-train data.image_size=16 data.colors=distinct "
                    "data.num_images=3000 data.noise=0",
                    ["data.num_images=300", "logger=csv", "debug=limit"]),
}


@pytest.fixture(scope="module")
def named_runs(tmp_path_factory):
    """{name: (run directory, the result of the README line that trained it)}."""
    base = tmp_path_factory.mktemp("readme-named")
    runs = {}
    for name, (command, budget) in PRODUCED_BY.items():
        run_dir = base / re.sub(r"\W+", "", name)
        result = run_inline(readme_args(command, [*budget, f"hydra.run.dir={run_dir}"]), cwd=base)
        runs[name] = (run_dir, result)
    return runs


SWEEP = ".venv/bin/lmvision-train -m seed=0,1,2 backbone=small_cnn,resnet18"
TINY = ["data.num_images=400", "logger=csv", "debug=limit"]  # of the lines CHECKED closely


def readme_args(command: str, budget: list[str]) -> list[str]:
    """``run_cli``/``run_inline`` arguments of a README line, which must be in the README."""
    assert command in readme_commands(), f"README.md no longer has: {command}"
    words = shlex.split(command)
    return ["-m", ENTRY_POINTS[words[0]], *words[1:], *budget]


@pytest.fixture(scope="module")
def readme_sweep(tmp_path_factory):
    """The README's sweep (six jobs, in its default directory): checked by its own line's test
    and what `multirun/image_classifier` stands for in the lmvision-compare lines."""
    cwd = tmp_path_factory.mktemp("readme-sweep")
    result = run_inline(readme_args(SWEEP, TINY), cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def check_six_jobs(cwd, result):
    """Six jobs in the default sweep directory, each with its own record and checkpoint, the
    sweep's summary line, the comparison notebook and lmvision-compare's paired test."""
    (sweep,) = (cwd / "multirun" / "image_classifier").glob("*/*")  # multirun/<name>/<date>/<time>
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3", "4", "5"]
    seen = set()
    for job in jobs:
        metrics = read(job / "metrics.json")
        record = read(job / "run.json")
        assert record["status"] == "completed" and "test/acc" in metrics
        assert (job / "checkpoints" / "last.ckpt").is_file()
        seen.add((record["seed"], record["choices"]["backbone"]))
    assert seen == {(s, b) for s in (0, 1, 2) for b in ("small_cnn", "resnet18")}
    assert f"Sweep {sweep.relative_to(cwd)}: 6 of 6 jobs completed" in result.stdout
    check_compare_notebook(sweep)
    # lmvision-compare on the sweep: two groups of three seeds, one tested against the other
    compared = run_inline(["-m", "lmvision.compare", str(sweep), "--format", "json",
                           "--baseline", "backbone=small_cnn"], cwd=cwd)
    assert compared.returncode == 0, compared.stderr[-2000:]
    groups = {g["group"]: g for g in json.loads(compared.stdout)}
    assert sorted(g["n"] for g in groups.values()) == [3, 3]
    other = groups["backbone=resnet18 data.num_images=400 debug=limit"]
    assert other["test/acc"]["pairs"] == 3 and 0.0 <= other["test/acc"]["p"] <= 1.0


def check_compare_notebook(runs_dir):
    """notebooks/compare_runs.ipynb runs on a real sweep and reports both backbones."""
    import os

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "compare_runs.ipynb", as_version=4)
    os.environ["LMVISION_RUNS_DIR"] = str(runs_dir)
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        del os.environ["LMVISION_RUNS_DIR"]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "6 completed runs" in text
    for backbone in ("small_cnn", "resnet18"):  # logger=csv does not make a group
        assert f"| backbone={backbone} data.num_images=400 debug=limit | 3 |" in text
    assert "bar_test_acc.png" in text and "curves_val_acc.png" in text


def check_ddp_sweep(cwd, result):
    """A sweep whose jobs each use trainer=ddp_cpu: every job starts its own second process in
    its own directory (not the sweep again), and the next job starts afresh."""
    (sweep,) = (cwd / "multirun" / "image_classifier").glob("*/*")
    assert f"Sweep {sweep.relative_to(cwd)}: 2 of 2 jobs completed" in result.stdout
    for job, seed in (("0", 0), ("1", 1)):
        record = read(sweep / job / "run.json")
        assert record["status"] == "completed" and record["seed"] == seed
        assert record["device"]["world_size"] == 2
        assert (sweep / job / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in sweep.iterdir()) == ["0", "1", "multirun.yaml"]
    compared = run_inline(["-m", "lmvision.compare", str(sweep), "--format", "json"], cwd=cwd)
    assert compared.returncode == 0, compared.stderr[-2000:]
    (group,) = json.loads(compared.stdout)
    assert group["n"] == 2 and group["seeds"] == [0, 1]


def check_local_jobs(cwd, result):
    """hydra/launcher=local_jobs: each job a process of its own through submitit."""
    (sweep,) = (cwd / "multirun" / "image_classifier").glob("*/*")
    assert f"Sweep {sweep.relative_to(cwd)}: 2 of 2 jobs completed" in result.stdout
    assert [read(sweep / j / "run.json")["status"] for j in ("0", "1")] == ["completed"] * 2
    assert (sweep / ".submitit").is_dir()


def check_ddp_equals_one_process(cwd, result):
    """Trained under DDP (2 CPU processes, gloo), then the checkpoint tested with 2 processes and
    with 1: every test item is evaluated exactly once, so the metrics agree. The test split
    (61 items) does not divide by the processes (shares of 31 and 30), and the evaluation
    batches (8) are smaller than a share, so a sampler that padded a share, or a mean taken per
    batch or per process rather than per item, would show."""
    (run_dir,) = (cwd / "outputs" / "image_classifier").glob("*/*")  # outputs/<name>/<date>/<time>
    record = read(run_dir / "run.json")
    assert record["status"] == "completed"
    assert record["device"]["world_size"] == 2 and record["device"]["strategy"] == "DDPStrategy"
    # Only rank 0 prints the summary and writes the record; rank 1 ran (its Hydra log exists).
    assert result.stdout.count("Run directory:") == 1
    assert (run_dir / "train_ddp_process_1.log").is_file()
    assert sorted(p.name for p in run_dir.glob("*.json")) == ["metrics.json", "run.json"]
    metrics = {}
    for trainer in ("ddp_cpu", "cpu"):
        out = cwd / f"eval-{trainer}"
        run = run_cli if trainer == "ddp_cpu" else run_inline  # DDP starts its own processes
        done = run(["-m", "lmvision.evaluate", f"ckpt_path={record['checkpoints']['best']}",
                    f"trainer={trainer}", "+data.datamodule.eval_batch_size=8",
                    f"hydra.run.dir={out}"], cwd=cwd)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics[trainer] = read(out / "metrics.json")
        assert read(out / "run.json")["class_split"]["items"]["test"] == 61
    assert metrics["ddp_cpu"].keys() == metrics["cpu"].keys()
    for key, value in metrics["cpu"].items():
        assert metrics["ddp_cpu"][key] == pytest.approx(value, abs=1e-6), key


# README lines that get closer checks than "it runs": run with this budget (real checkpoints
# and records, rather than debug=fdr), in the default run or sweep directory, then checked
CHECKED = {
    ".venv/bin/lmvision-train trainer=ddp_cpu":
        (["data.num_images=305", "trainer.max_epochs=1", "logger=csv"], check_ddp_equals_one_process),
    ".venv/bin/lmvision-train -m seed=0,1 trainer=ddp_cpu": (TINY, check_ddp_sweep),
    ".venv/bin/lmvision-train -m seed=0,1 hydra/launcher=local_jobs trainer=cpu":
        (TINY, check_local_jobs)}


def test_the_closely_checked_lines_are_in_the_readme():
    lines = set(CHECKED) | {SWEEP} | {line for line, _ in PRODUCED_BY.values()}
    assert lines <= set(readme_commands())


def read(path):
    return json.loads(path.read_text())


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
    produced = {line: named_runs[name][1] for name, (line, _) in PRODUCED_BY.items()}
    if command in produced:  # trained once, for this line and those that name its run
        assert produced[command].returncode == 0, produced[command].stderr[-3000:]
        assert "Run directory:" in produced[command].stdout
        return
    if command == SWEEP:  # run once for this line and the lmvision-compare lines
        check_six_jobs(*request.getfixturevalue("readme_sweep"))
        return
    if command in CHECKED:
        budget, check = CHECKED[command]
        own_processes = "ddp" in command or "hydra/launcher=" in command
        result = (run_cli if own_processes else run_inline)(readme_args(command, budget),
                                                           cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        check(tmp_path, result)
        return
    if command.split(" ")[0].endswith("lmvision-compare"):
        cwd, _ = request.getfixturevalue("readme_sweep")
        (sweep,) = (cwd / "multirun" / "image_classifier").glob("*/*")
        command = command.replace("multirun/image_classifier", str(sweep))
    if "data=webdataset" in command:  # the README's shards: written here
        from data_files import webdataset_shards

        pattern = webdataset_shards(tmp_path / "shards")
        command = re.sub(r"data\.shards='[^']*'", f"data.shards='{pattern}'", command)
    if "/data/pets" in command:  # the README's own data: a folder and a JSONL written here
        command = command.replace("/data/pets", str(user_data(tmp_path / "pets")))
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # a resume changes the run it continues: use a copy
    for name, (path, _) in named_runs.items():
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
        if any(w.startswith("evaluation.generation.judge=") for w in words):
            # gen/acc: a few samples per class (each a whole image, token by token)
            args += ["evaluation.generation.samples_per_class=2", "evaluation.samples.images=4"]
        if not resume:
            args += [f"hydra.run.dir={tmp_path / 'out'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    # one process: run here (the imports paid once); processes of a sweep or DDP: launched
    own_processes = any("ddp" in w or w.startswith("hydra/launcher=") for w in words)
    result = (run_cli(args, cwd=tmp_path, timeout=900) if own_processes
              else run_inline(args, cwd=tmp_path))
    assert result.returncode == 0, f"{sys.executable} {' '.join(args)}\n{result.stderr[-3000:]}"
    if words[0].endswith("lmvision-compare"):
        assert "| backbone=resnet18 data.num_images=400 debug=limit | 3 |" in result.stdout
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
