"""``sdcompose serve --ray`` without a cluster: the one-line error without Ray, bad options, ``--write-config``."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml


def sdcompose(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdcompose.cli", "serve", *map(str, args)], capture_output=True,
                          text=True, timeout=300, env=os.environ | {"SDCOMPOSE_DEBUG": ""} | (env or {}))


def test_serve_ray_without_ray_is_one_line_naming_the_extra(tmp_path, home):
    blocker = tmp_path / "no_ray"
    blocker.mkdir()
    (blocker / "ray.py").write_text("raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n")
    run = sdcompose("--ray", "--replicas", "2", env={"PYTHONPATH": str(blocker)})
    assert run.returncode == 2
    assert run.stderr.strip() == "sdcompose: error: --ray needs Ray, which is not installed: pip install 'sdcompose[ray]'"


@pytest.mark.parametrize("args, message", [
    (("--replicas", "2", "--autoscale", "1:4"), "give --replicas N or --autoscale MIN:MAX, not both"),
    (("--autoscale", "4:1"), "--autoscale '4:1': expected MIN:MAX replicas, e.g. 1:4"),
    (("--replicas", "0"), "--replicas must be between 1 and 1000, got 0"),
    (("--models-per-replica", "0"), "--models-per-replica must be at least 1, got 0"),
    (("--auth", "me:secret", "--write-config", "x.yaml"), "--write-config keeps passwords out of serve.yaml"),
])
def test_bad_options_are_one_line(tmp_path, home, args, message):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    run = sdcompose("--ray", *args)
    assert run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1, run.stderr[-2000:]
    assert message in run.stderr


def test_write_config_is_a_serve_config_that_builds_the_same_application(tmp_path, home):
    pytest.importorskip("ray", reason="the ray extra is not installed")
    target, tokens = tmp_path / "serve.yaml", tmp_path / "tokens"
    tokens.write_text("a-token-of-sixteen-or-more\n")
    run = sdcompose("--ray", "--autoscale", "1:4", "--gpus-per-replica", "1", "--models-per-replica", "3",
                    "--auth-token-file", tokens, "--port", "8000", "--write-config", target)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == str(target)
    config = yaml.safe_load(target.read_text())
    app = config["applications"][0]
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8000}
    assert app["import_path"] == "sdcompose.server.rayserve:build" and app["route_prefix"] == "/"
    generator = next(d for d in app["deployments"] if d["name"] == "generator")
    assert generator["ray_actor_options"] == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert generator["autoscaling_config"]["min_replicas"] == 1
    assert generator["autoscaling_config"]["max_replicas"] == 4
    assert app["args"]["models_per_replica"] == 3 and app["args"]["auth_token_file"] == str(tokens)
    # what `serve deploy` does with the file: import the builder and call it with args
    from sdcompose.server.rayserve import build
    built = build(app["args"])
    assert built._bound_deployment.name == "ingress"
