"""The CLI as a user meets it: --help on every command, config show, config errors, deployments."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from livecc.cli import app

runner = CliRunner()


@pytest.mark.parametrize("args", [[], ["build"], ["stage", "run"], ["stage", "list"], ["status"], ["inspect", "shards"],
                                  ["inspect", "talking-head"], ["config", "show"], ["serve"], ["build-and-train"],
                                  ["sample-archive"], ["train", "pretrain"]])
def test_every_command_explains_itself(args):
    res = runner.invoke(app, args + ["--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and len(res.output) > 200


def _config(tmp_path, **stages):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"corpus": "c", "flow": "pretrain", "root": "root",
                                    "stages": {"ingest": {"path": "archive"}, **stages}}))
    return path


def test_config_show_fills_every_default_and_resolves_paths(tmp_path):
    res = runner.invoke(app, ["config", "show", str(_config(tmp_path))])
    assert res.exit_code == 0, res.output
    shown = yaml.safe_load(res.output)
    assert shown["root"] == str(tmp_path / "root")
    assert shown["stages"]["ingest"]["path"] == str(tmp_path / "archive")
    assert shown["stages"]["pretrain_clip"]["max_clip_sec"] == 240 and shown["stages"]["wps_filter"]["max_wps"] == 4


def test_bad_config_is_a_clear_error_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "livecc", "status",
                           str(_config(tmp_path, wps_filter={"max_wps": "fast"}))], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "c.yaml: stages.wps_filter.max_wps" in proc.stderr and "Traceback" not in proc.stderr


def test_scheduled_build_deployment_carries_cron_and_config(tmp_path):
    from flows.build import deployment

    dep = deployment(str(_config(tmp_path)), "0 3 * * *")
    assert dep.name == "c-build"
    assert dep.parameters["config_path"] == str(tmp_path / "c.yaml")
    assert [s.schedule.cron for s in dep.schedules] == ["0 3 * * *"]


def test_an_unknown_flow_is_a_config_error_before_prefect_is_imported(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"corpus": "c", "flow": "build", "root": "root"}))
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom livecc.cli import app\n"
            f"res = CliRunner().invoke(app, ['status', {str(path)!r}])\n"
            "print('EXIT', res.exit_code, 'PREFECT', 'prefect' in sys.modules, 'RAY', 'ray' in sys.modules)\n"
            "print(res.output)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "EXIT 2 PREFECT False RAY False" in proc.stdout, proc.stdout + proc.stderr
    assert f"{path}: flow: no recipe 'build'" in proc.stdout and "pretrain, sft" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr


def test_the_engine_imports_no_stage_flow_recipe_or_cli():
    """Dependencies point one way: pipeline/ knows stages, parts and resources, but no videos."""
    import ast
    from pathlib import Path

    above = {"stages", "flows", "recipes", "livecc", "train", "release"}
    for path in sorted((Path(__file__).resolve().parents[1] / "pipeline").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in above, f"{path.name} imports {name}"


def test_switching_off_a_stage_whose_neighbours_do_not_connect_is_a_config_error(tmp_path):
    cfg = _config(tmp_path)
    res = runner.invoke(app, ["stage", "list", str(cfg), "--set", "stages.wps_filter.enabled=false"])
    assert res.exit_code == 0 and "wps_filter" in res.output and "switched off" in res.output, res.output
    res = runner.invoke(app, ["stage", "list", str(cfg), "--set", "stages.pretrain_clip.enabled=false"])
    assert res.exit_code == 2
    assert "stages.pretrain_clip.enabled: with pretrain_clip switched off, wps_filter would read" in res.output
