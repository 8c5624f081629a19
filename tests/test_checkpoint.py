"""Atomic checkpoint writes and safe reads."""
import pytest
import torch

from mambarec_fast.checkpoint import load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    state = {"model": {"w": torch.randn(3, 2)}, "epoch": 4, "best": {"valid": {"recall@20": 0.5}}, "rng": torch.get_rng_state()}
    save_checkpoint(tmp_path / "sub" / "last.pt", state)
    loaded = load_checkpoint(tmp_path / "sub" / "last.pt")
    assert loaded["epoch"] == 4 and loaded["best"] == state["best"]
    torch.testing.assert_close(loaded["model"]["w"], state["model"]["w"])
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["last.pt"]  # no temporary left behind


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(tmp_path / "last.pt", {"epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    torch.save({"format_version": 1, "obj": object()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "evil.pt")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a mambarec_fast checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot be read"):
        load_checkpoint(tmp_path / "garbage.pt")
