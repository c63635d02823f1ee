"""Ray is an optional extra: nothing but the ``--ray`` paths imports it."""
from __future__ import annotations

import os
import subprocess
import sys

RAY_ONLY = ("sdcompose.raycluster", "sdcompose.batch.ray_workers", "sdcompose.server.ray")

SCRIPT = f"""
import pkgutil, sys
import sdcompose
from sdcompose.cli import main
for info in pkgutil.walk_packages(sdcompose.__path__, "sdcompose."):
    if not info.name.startswith({RAY_ONLY!r}):
        __import__(info.name)
for package in ("sdcompose.pipelines", "sdcompose.plugins", "sdcompose.ui", "sdcompose.server"):
    try:
        module = __import__(package, fromlist=["_"])
    except ModuleNotFoundError:
        continue
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if not info.name.startswith({RAY_ONLY!r}):
            __import__(info.name)
assert main(["generate", "--model", "tiny-sd15", "-W", "64", "-H", "64", "--steps", "1", "-q", "-o", sys.argv[1]]) == 0
loaded = sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))
print("RAY MODULES:", loaded)
"""


def test_default_cli_ui_and_serve_paths_never_import_ray(tmp_path, home):
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out.png")], capture_output=True, text=True,
                         timeout=600, env=os.environ | {"SDCOMPOSE_DEBUG": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "RAY MODULES: []" in run.stdout
