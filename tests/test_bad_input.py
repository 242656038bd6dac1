"""The bad-input promise, as a battery: for every bad input below, every `cbs`
command exits non-zero with one `cbs: error:` line on stderr, no traceback,
and leaves existing results byte-identical."""

import hashlib
import shutil
from pathlib import Path

import pytest
from conftest import DATA_DIR as DATA

from harness.cli import main
from harness.sweep.run import run_sweep

GOOD_SPEC = """
workload = "mnist_fc32x1"
optimizer = "sgd"
batch_sizes = [32, 64]
target = 0.5
max_steps = 40
eval_every = 20
[search]
kind = "grid"
[search.space]
learning_rate = [0.1]
"""
TRAIN = ["train", "--workload", "mnist_fc32x1", "--batch-size", "32", "--learning-rate", "0.1", "--max-steps", "20"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A finished sweep, a data folder with a truncated MNIST file, a good
    steps table, and a plain file where folders are expected."""
    root = tmp_path_factory.mktemp("world")
    (root / "good.toml").write_text(GOOD_SPEC)
    run_sweep(root / "good.toml", root / "sweep", workers=1, data_dir=DATA)
    shutil.copytree(Path(DATA) / "mnist", root / "bad_data" / "mnist")
    images = root / "bad_data" / "mnist" / "train-images-idx3-ubyte.gz"
    images.chmod(0o644)
    images.write_bytes(images.read_bytes()[:1000])
    (root / "steps.csv").write_text("batch_size,steps\n32,100\n64,55\n128,30\n256,20\n")
    (root / "file").write_text("not a folder\n")
    return root


def spec(text: str):
    """A spec file with `text` in place of GOOD_SPEC's matching lines (or added)."""

    def make(root: Path) -> str:
        lines = GOOD_SPEC.splitlines()
        for new in text.splitlines():
            key = new.split("=")[0].strip()
            hits = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == key]
            if hits:
                lines[hits[0]] = new
            else:
                lines.insert(1, new)
        path = root / f"spec-{hashlib.md5(text.encode()).hexdigest()[:8]}.toml"
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    return make


def sweep(make_spec, *extra):
    return lambda root: [
        "sweep",
        make_spec(root) if callable(make_spec) else make_spec.format(root=root),
        "--out",
        str(root / "new"),
        "--data-dir",
        DATA,
        *extra,
    ]


def text_file(name: str, content: str):
    return binary_file(name, content.encode())


def binary_file(name: str, content: bytes):
    def make(root: Path) -> str:
        (root / name).write_bytes(content)
        return str(root / name)

    return make


def broken_workload(root: Path) -> str:
    """`--workload FILE.py:w` of a workload file whose line 2 opens a bracket it never closes."""
    return text_file("broken_workload.py", "import math\nx = (1,\n")(root) + ":w"


CASES = {
    # cbs sweep: malformed and ill-typed spec fields, impossible ranges, files, options
    "spec missing": sweep("{root}/nothing.toml"),
    "spec not TOML": sweep(text_file("broken.toml", "workload = \n[search")),
    "spec is a folder": sweep("{root}/sweep"),
    "unknown workload": sweep(spec('workload = "mnist_cnnn"')),
    "unknown optimizer": sweep(spec('optimizer = "adagrad"')),
    "unknown field": sweep(spec("learning_rat = 0.1")),
    "max_steps ill-typed": sweep(spec('max_steps = "many"')),
    "max_steps negative": sweep(spec("max_steps = -5")),
    "batch sizes min above max": sweep(spec("batch_sizes = {min = 64, max = 32}")),
    "batch size above the training set": sweep(spec("batch_sizes = [32, 100000]")),
    "batch size zero": sweep(spec("batch_sizes = [0, 32]")),
    "learning rate negative": sweep(spec("learning_rate = [-0.1]")),
    "target unreachable": sweep(spec("target = 0")),
    "target ill-typed": sweep(spec('target = "low"')),
    "unknown search kind": sweep(spec('kind = "random_walk"')),
    "unknown eval schedule": sweep(spec('eval_schedule = "sometimes"')),
    "workers zero": sweep(spec(""), "--workers", "0"),
    "misspelt key": sweep(spec("max_step = 40")),
    "target outside the metric's range": sweep(spec("target = 5")),
    "spec not UTF-8": sweep(lambda root: binary_file("latin1.toml", GOOD_SPEC.encode() + b"# caf\xe9\n")(root)),
    "gpus not on this machine": sweep(spec(""), "--gpus", "99"),
    "workload file with a syntax error": sweep(lambda root: spec(f'workload = "{broken_workload(root)}"')(root)),
    # (MNIST ships with the package: a dataset that does not)
    "data folder missing": lambda root: [
        "sweep",
        spec('workload = "fashion_mnist_fc32x1"')(root),
        "--out",
        str(root / "new"),
        "--data-dir",
        str(root / "no_data"),
    ],
    "truncated dataset file": lambda root: [
        "sweep",
        spec("")(root),
        "--out",
        str(root / "new"),
        "--data-dir",
        str(root / "bad_data"),
    ],
    "changed spec on an existing folder": lambda root: [
        "sweep",
        spec("target = 0.4")(root),
        "--out",
        str(root / "sweep"),
        "--data-dir",
        DATA,
    ],
    "out is a file": lambda root: ["sweep", spec("")(root), "--out", str(root / "file"), "--data-dir", DATA],
    # cbs train
    "train batch size zero": lambda root: TRAIN + ["--batch-size", "0", "--data-dir", DATA],
    "train batch size not a number": lambda root: TRAIN + ["--batch-size", "lots"],
    "train learning rate negative": lambda root: TRAIN + ["--learning-rate", "-1", "--data-dir", DATA],
    "train unknown workload": lambda root: TRAIN + ["--workload", "imagenet_resnet50", "--data-dir", DATA],
    "train microbatches not dividing": lambda root: TRAIN + ["--microbatches", "3", "--data-dir", DATA],
    "train max steps zero": lambda root: TRAIN + ["--max-steps", "0", "--data-dir", DATA],
    "train truncated dataset file": lambda root: TRAIN + ["--data-dir", str(root / "bad_data")],
    "train checkpoint dir is a file": lambda root: (
        TRAIN + ["--checkpoint-every", "10", "--checkpoint-dir", str(root / "file"), "--data-dir", DATA]
    ),
    "train out is a file": lambda root: TRAIN + ["--out", str(root / "file"), "--data-dir", DATA],
    "train learning rate zero with out": lambda root: (
        TRAIN + ["--learning-rate", "0", "--out", str(root / "new"), "--data-dir", DATA]
    ),
    "train batch size above the training set with out": lambda root: (
        TRAIN + ["--batch-size", "100000", "--out", str(root / "new"), "--data-dir", DATA]
    ),
    "train workload file with a syntax error": lambda root: (
        TRAIN + ["--workload", broken_workload(root), "--data-dir", DATA]
    ),
    # cbs analyze
    "analyze missing folder": lambda root: ["analyze", str(root / "nowhere")],
    "analyze not a sweep": lambda root: ["analyze", str(root / "bad_data")],
    "analyze a file": lambda root: ["analyze", str(root / "file")],
    "analyze target out of range": lambda root: ["analyze", str(root / "sweep"), "--target", "-3"],
    "analyze target nan": lambda root: ["analyze", str(root / "sweep"), "--target", "nan"],
    # cbs fit
    "fit missing table": lambda root: ["fit", str(root / "nothing.csv")],
    "fit columns missing": lambda root: ["fit", text_file("cols.csv", "b,s\n32,100\n64,50\n")(root)],
    "fit steps not numbers": lambda root: ["fit", text_file("nan.csv", "batch_size,steps\n32,x\n64,y\n")(root)],
    "fit empty table": lambda root: ["fit", text_file("empty.csv", "")(root)],
    "fit header only": lambda root: ["fit", text_file("header.csv", "batch_size,steps\n")(root)],
    "fit one row": lambda root: ["fit", text_file("one.csv", "batch_size,steps\n32,100\n")(root)],
    "fit confidence above 1": lambda root: ["fit", str(root / "steps.csv"), "--confidence", "1.5"],
    "fit overhead negative": lambda root: ["fit", str(root / "steps.csv"), "--overhead", "-1"],
    "fit a folder": lambda root: ["fit", str(root / "sweep")],
    # cbs gns
    "gns unknown workload": lambda root: ["gns"] + TRAIN[1:] + ["--workload", "mnist_rnn", "--data-dir", DATA],
    "gns samples negative": lambda root: (
        ["gns"] + TRAIN[1:] + ["--microbatches", "2", "--num-samples", "-1", "--data-dir", DATA]
    ),
    # cbs nqm
    "nqm batch sizes not integers": lambda root: ["nqm", "--batch-sizes", "a,b"],
    "nqm batch sizes empty": lambda root: ["nqm", "--batch-sizes", ""],
    "nqm batch size zero": lambda root: ["nqm", "--batch-sizes", "0,4"],
    "nqm dims zero": lambda root: ["nqm", "--batch-sizes", "1,2", "--dims", "0"],
    "nqm target negative": lambda root: ["nqm", "--batch-sizes", "1,2", "--target", "-1"],
    "nqm unknown optimizer": lambda root: ["nqm", "--batch-sizes", "1,2", "--optimizer", "lion"],
    "nqm batch sizes missing": lambda root: ["nqm"],
}


def snapshot(root: Path) -> dict:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".jax_cache" not in p.parts
    }


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line_and_touches_nothing(case, world, capsys):
    argv = CASES[case](world)
    before = snapshot(world)
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    out = capsys.readouterr()
    err = out.err.strip()
    assert status not in (0, None), (argv, out.out)
    assert "Traceback" not in out.err + out.out
    assert len(err.splitlines()) == 1 and err.startswith("cbs: error: "), err
    assert not (world / "new").exists()
    after = snapshot(world)
    assert {k: v for k, v in after.items() if k in before} == before
    for path in set(after) - set(before):  # spec, table and workload files written by this case, nothing else
        assert path.endswith((".toml", ".csv", ".py")) and "/" not in path, path


SPEC_KEYS = "name, description, workload, workload_options, optimizer, batch_sizes, target, max_steps, max_examples, "


@pytest.mark.parametrize(
    "make_argv, line",
    [
        (
            sweep(text_file("max_step.toml", GOOD_SPEC.replace("max_steps", "max_step"))),
            "{root}/max_step.toml: max_step: unknown key; did you mean max_steps? allowed: " + SPEC_KEYS,
        ),
        (
            sweep(text_file("typo.toml", GOOD_SPEC.replace("mnist_fc32x1", "mnist_simple_cn"))),
            "{root}/typo.toml: workload: unknown workload 'mnist_simple_cn'; did you mean mnist_simple_cnn? allowed: "
            "mnist_simple_cnn, mnist_fc1024, ",
        ),
        (
            sweep(text_file("lr.toml", GOOD_SPEC.replace("learning_rate", "learning_rat"))),
            "{root}/lr.toml: search.space.learning_rat: unknown metaparameter; did you mean learning_rate? allowed: "
            "algorithm, b1, b2, ",
        ),
        (
            sweep(text_file("five.toml", GOOD_SPEC.replace("target = 0.5", "target = 5"))),
            "{root}/five.toml: target: 5 is outside the range of error_rate (0 to 1): every error_rate is below it; "
            "allowed: (0.0, 1.0]",
        ),
        (
            sweep(binary_file("latin1.toml", GOOD_SPEC.encode() + b"# caf\xe9\n")),
            "{root}/latin1.toml: line 12: not valid UTF-8 (byte 0xe9); allowed: a spec file in UTF-8, as TOML requires",
        ),
        (
            lambda root: TRAIN + ["--workload", broken_workload(root)],
            "workload file {root}/broken_workload.py, line 2: SyntaxError: '(' was never closed",
        ),
        (
            lambda root: ["fit", text_file("header.csv", "batch_size,steps\n")(root)],
            "{root}/header.csv: 0 rows; a fit needs at least 2 batch sizes (3 for an interval); allowed: one row per "
            "batch size, at least 2 per group",
        ),
        (
            lambda root: ["fit", text_file("one.csv", "batch_size,steps\n32,100\n")(root)],
            "{root}/one.csv: 1 row; a fit needs at least 2 batch sizes (3 for an interval); allowed: one row per "
            "batch size, at least 2 per group",
        ),
    ],
    ids=[
        "misspelt key",
        "misspelt workload",
        "misspelt metaparameter",
        "target above an error rate's range",
        "spec not UTF-8",
        "workload file syntax error",
        "fit header only",
        "fit one row",
    ],
)
def test_the_line_a_user_sees(make_argv, line, tmp_path, capsys):
    """The whole error line (its start, where the allowed list runs on), exit status 2, nothing left behind."""
    assert main(make_argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cbs: error: " + line.format(root=tmp_path)), err
    assert not (tmp_path / "new").exists()


def test_gpus_on_a_machine_without_one_leaves_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("harness.sweep.executors.shutil.which", lambda name: None)  # no nvidia-smi: no GPU
    assert main(sweep(text_file("good.toml", GOOD_SPEC), "--gpus", "0")(tmp_path)) == 2
    assert capsys.readouterr().err == (
        "cbs: error: --gpus 0: nvidia-smi lists no GPU on this machine; allowed: leave --gpus out\n"
    )
    assert not (tmp_path / "new").exists()


def test_a_truncated_record_is_one_warning_line(world, tmp_path, capsys):
    shutil.copytree(world / "sweep", tmp_path / "sweep")
    record = sorted((tmp_path / "sweep" / "trials").glob("*/record.json"))[0]
    record.write_text(record.read_text()[:50])
    assert main(["analyze", str(tmp_path / "sweep")]) == 0
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"cbs: warning: skipping a corrupt trial record: {record}: "), line
