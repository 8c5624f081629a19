"""The `mambarec-fast` command line: train -> evaluate -> recommend, make-synthetic, clean errors."""
import csv
import json
import subprocess
import sys

import pytest

from mambarec_fast.cli import main

TRAIN = ["train", "--data", "synthetic:tiny", "--epochs", "1", "--set", "train_batch_size=256", "--set", "embedding_size=16", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(TRAIN + ["--out", str(out)]) == 0
    return out


def test_train_writes_checkpoints_and_metrics(run_dir):
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["epoch"] == 0 and "recall@20" in record["valid"]


def test_evaluate_and_recommend(run_dir, tmp_path, capsys):
    assert main(["evaluate", str(run_dir / "best.pt")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"valid", "test"} and 0 <= report["test"]["ndcg@20"] <= 1
    recorded = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert report["valid"]["recall@20"] == pytest.approx(recorded["valid"]["recall@20"], abs=1e-12)

    out = tmp_path / "recs.csv"
    assert main(["recommend", str(run_dir / "last.pt"), "--k", "7", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert rows[0].keys() == {"userID", "rank", "itemID"} and len(rows) == 300 * 7
    from mambarec_fast.data import make_synthetic

    dataset = make_synthetic("tiny")
    train_pairs = {(int(u), int(i)) for u, i in dataset.train}
    assert not any((int(r["userID"]), int(r["itemID"])) in train_pairs for r in rows)


def test_resume_continues_with_more_epochs(run_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "--set", "epochs=2", "--no-progress"]) == 0
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2


def test_make_synthetic_round_trips(tmp_path):
    assert main(["make-synthetic", "tiny", str(tmp_path / "tiny")]) == 0
    from mambarec_fast.data import load_mmrec

    dataset = load_mmrec(tmp_path / "tiny")
    assert dataset.n_users == 300 and set(dataset.features) == {"image", "text"}


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--data", "/no/such/folder", "--epochs", "1"], "/no/such/folder"),
        (["train", "--data", "synthetic:huge"], "huge"),
        (["train", "--set", "knnk=3"], "unknown config key"),
        (["evaluate", "/no/such.pt"], "does not exist"),
        (["recommend", "/no/such.pt", "--k", "0"], "--k must be positive"),
    ],
)
def test_bad_input_prints_one_message_and_exits_non_zero(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "mambarec_fast", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "train" in done.stdout
