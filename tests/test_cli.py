"""The README's main job (``polyproj demo``) runs end to end, writes its files and resumes."""

import json

from polyproj.cli import main


def test_demo_runs_and_resumes(tmp_path, capsys):
    assert main(["demo", "--epochs", "1", "--out", str(tmp_path)]) == 0
    history = json.loads((tmp_path / "demo.json").read_text())
    assert len(history) == 1 and history[0]["projected_max_violation"] < 1e-5
    assert (tmp_path / "demo.png").exists() and (tmp_path / "demo_checkpoint.pt").exists()
    assert main(["demo", "--epochs", "2", "--out", str(tmp_path)]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert len(json.loads((tmp_path / "demo.json").read_text())) == 2


def test_experiment_subcommands_are_routed(capsys):
    import pytest

    for sub, words in (("graph-matching", "--outliers"), ("sorting", "--loss")):
        with pytest.raises(SystemExit) as exit_info:
            main([sub, "--help"])
        assert exit_info.value.code == 0
        assert words in capsys.readouterr().out
