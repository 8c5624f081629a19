"""Config defaults, YAML files, --set overrides and grids."""
import pytest

from mambarec_fast.config import DEFAULTS, PAPER_GRID, expand_grid, load_config, parse_override


def test_defaults_are_specs_values():
    config, grid = load_config()
    assert grid == {}
    assert config["embedding_size"] == 64 and config["knn_k"] == 10 and config["n_ui_layers"] == 4
    assert config["reduction_factor"] == 8 and config["cl_loss"] == 0.01 and config["reg_weight"] == 1e-4
    assert config["train_batch_size"] == 2048 and config["learning_rate"] == 0.001
    assert config["mmd_weight"] in PAPER_GRID["mmd_weight"]


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("knn_k: 5\nepochs: 3\ngrid:\n  mmd_weight: [0.1, 0.2]\n")
    config, grid = load_config(path, ["epochs=7", "modalities=[text]", "cl_temperature=0.5"])
    assert config["knn_k"] == 5 and config["epochs"] == 7 and config["modalities"] == ["text"]
    assert config["cl_temperature"] == 0.5
    assert grid == {"mmd_weight": [0.1, 0.2]}


def test_list_override_of_scalar_key_is_a_grid_axis():
    config, grid = load_config(None, ["mmd_kernel_bandwidth=[1.0, 2.0]", "seed=1"])
    assert grid == {"mmd_kernel_bandwidth": [1.0, 2.0]}
    points = expand_grid(config, dict(grid, mmd_weight=[0.1, 0.2]))
    assert len(points) == 4 and {(p["mmd_weight"], p["mmd_kernel_bandwidth"]) for p in points} == {
        (0.1, 1.0), (0.1, 2.0), (0.2, 1.0), (0.2, 2.0)
    }
    assert all(p["seed"] == 1 for p in points)


def test_every_default_key_round_trips_through_set():
    for key, value in DEFAULTS.items():
        if value is None or isinstance(value, list):
            continue
        config, _ = load_config(None, [f"{key}={value}"])
        assert config[key] == value


@pytest.mark.parametrize("text, message", [("knnk=3", "unknown config key"), ("novalue", "key=value"), ("=3", "key=value")])
def test_bad_overrides(text, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [text])


def test_bad_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("epochs: [1,\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    with pytest.raises(ValueError, match=r"typo.yaml: unknown config key\(s\) \['epoch'\]"):
        load_config(tmp_path / "typo.yaml")


def test_parse_override_reads_yaml_values():
    assert parse_override("a=3") == ("a", 3)
    assert parse_override("a=0.5") == ("a", 0.5)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=synthetic:tiny") == ("a", "synthetic:tiny")
