"""The control-map cache on disk: repeated CLI calls run a detector once; a changed param, a plugin that opts
out, the cache turned off, a damaged file all run it again; the folder stays under its bound.

The detector is a test plugin registered for real (a dist-info folder on PYTHONPATH) that appends a line to a
file each time it runs. Every test gives the cache its own folder (conftest.py turns it off elsewhere)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest
from PIL import Image

from sdcompose.pipelines.map_cache import DIGEST, MapCache, disk_key
from sdcompose.settings import Settings

PKG = f"sdc_counted_{uuid.uuid4().hex[:6]}"

PLUGIN = '''
import os
import numpy as np
from PIL import Image
from sdcompose.plugins.api import API_VERSION, Conditioner, ParamSpec


class Counted(Conditioner):
    id = "counted"
    version = "1.0"
    api_version = API_VERSION
    params = (ParamSpec("level", "int", 1, min=0, max=9),)

    def preprocess(self, source, ctx, params):
        with open(os.environ["SDC_COUNT_FILE"], "a") as file:
            file.write(self.id + "\\n")
        grey = np.asarray(source.image.convert("L"), dtype=np.int32)
        picture = Image.fromarray(((grey // (params["level"] + 1)) % 256).astype(np.uint8)).convert("RGB")
        picture.info["found"] = "what the detector saw"
        return picture


class Uncached(Counted):
    id = "uncached"
    cache_maps = False
'''


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / f"{PKG}.py").write_text(PLUGIN)
    info = root / f"{PKG}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(f"""
        [sdcompose.plugins]
        counted = {PKG}:Counted
        uncached = {PKG}:Uncached
        """))
    return root


@pytest.fixture
def env(site, tmp_path, home):
    return os.environ | {"SDCOMPOSE_DEBUG": "", "SDCOMPOSE_MAP_CACHE": str(tmp_path / "maps"),
                         "SDC_COUNT_FILE": str(tmp_path / "count.txt"),
                         "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def preprocess(env, photo, out, *args, plugin="counted", **extra):
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "preprocess", plugin, str(photo), "-o", str(out),
                          *args], capture_output=True, text=True, env=env | extra, timeout=600)
    assert run.returncode == 0, run.stderr
    return np.asarray(Image.open(out))


def runs(env) -> int:
    path = env["SDC_COUNT_FILE"]
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0


def test_repeated_cli_calls_run_the_detector_once_and_a_changed_param_runs_it_again(env, photo, tmp_path):
    first = preprocess(env, photo, tmp_path / "a.png", "--param", "level=1")
    again = preprocess(env, photo, tmp_path / "b.png", "--param", "level=1")
    assert runs(env) == 1
    assert np.array_equal(first, again)
    other = preprocess(env, photo, tmp_path / "c.png", "--param", "level=3")
    assert runs(env) == 2 and not np.array_equal(first, other)  # never the map of other params
    assert len(list((tmp_path / "maps").glob("*.png"))) == 2


def test_a_damaged_cache_file_is_a_miss_and_is_written_again(env, photo, tmp_path):
    made = preprocess(env, photo, tmp_path / "a.png")
    [stored] = (tmp_path / "maps").glob("*.png")
    data = stored.read_bytes()
    stored.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk under another writer
    assert np.array_equal(preprocess(env, photo, tmp_path / "b.png"), made)
    assert runs(env) == 2 and stored.read_bytes() == data  # run again, and the file written whole again
    preprocess(env, photo, tmp_path / "c.png")
    assert runs(env) == 2  # the rewritten file serves again


def test_every_kind_of_damage_is_a_miss(tmp_path):
    cache = MapCache(tmp_path, limit=2**20)
    cache.put("k", noise(2))
    path = tmp_path / "k.png"
    data = path.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    for damaged in (data[: len(data) // 2], data[:-30] + bytes(30), bytes(flipped), b"not a png at all", b""):
        path.write_bytes(damaged)
        assert cache.get("k") is None
    path.write_bytes(data)
    assert np.array_equal(np.asarray(cache.get("k")), np.asarray(noise(2)))


@pytest.fixture
def in_process(site, env, monkeypatch):
    """Pipelines in this process that see the test plugins; each new Pipeline starts with an empty memory cache."""
    monkeypatch.syspath_prepend(str(site))
    for name in ("SDCOMPOSE_MAP_CACHE", "SDC_COUNT_FILE"):
        monkeypatch.setenv(name, env[name])
    import sdcompose
    return lambda: sdcompose.Pipeline(device="cpu")


def test_off_and_plugins_that_opt_out_run_the_detector_every_time(in_process, env, photo, tmp_path, monkeypatch):
    in_process().preprocess("counted", photo)
    in_process().preprocess("counted", photo)
    assert runs(env) == 1  # on: the second Pipeline reads the first one's file
    for _ in range(2):
        in_process().preprocess("uncached", photo)
    assert runs(env) == 3 and len(list((tmp_path / "maps").iterdir())) == 1
    for name, value in (("SDCOMPOSE_MAP_CACHE", "off"), ("SDCOMPOSE_MAP_CACHE_MB", "0")):
        with monkeypatch.context() as patch:
            patch.setenv(name, value)
            for _ in range(2):
                in_process().preprocess("counted", photo, level=5)
    assert runs(env) == 7 and len(list((tmp_path / "maps").iterdir())) == 1


def test_a_bad_bound_is_one_sentence(env, photo, tmp_path):
    run = subprocess.run([sys.executable, "-m", "sdcompose.cli", "preprocess", "counted", str(photo), "-o",
                          str(tmp_path / "a.png")], capture_output=True, text=True, timeout=600,
                         env=env | {"SDCOMPOSE_MAP_CACHE_MB": "lots"})
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "SDCOMPOSE_MAP_CACHE_MB must be a whole number of megabytes" in run.stderr
    assert runs(env) == 0


def noise(seed: int, side: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8))


def test_the_folder_stays_under_its_bound_and_the_least_recently_used_go_first(tmp_path):
    one = len(_png(noise(0)))
    cache = MapCache(tmp_path, limit=3 * one + one // 2)  # room for three maps
    (tmp_path / "notes.txt").write_bytes(bytes(10 * one))  # not the cache's: never counted or removed
    keys = [f"{i:064x}" for i in range(5)]
    for i, key in enumerate(keys[:3]):
        cache.put(key, noise(i))
        os.utime(tmp_path / f"{key}.png", ns=(10**18 + i, 10**18 + i))  # stored in order: 0 oldest
    assert cache.get(keys[0]) is not None  # used now: the newest
    cache.put(keys[3], noise(3))
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted([keys[0], keys[2], keys[3]])
    assert sum(p.stat().st_size for p in tmp_path.glob("*.png")) <= cache.limit
    assert (tmp_path / "notes.txt").exists()
    assert np.array_equal(np.asarray(cache.get(keys[0])), np.asarray(noise(0)))
    assert cache.get(keys[1]) is None
    cache.put(keys[4], noise(4, side=256))  # larger than the whole bound: not kept, and nothing else goes for it
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == sorted([keys[0], keys[2], keys[3]])


def test_a_map_comes_back_with_its_text_info_and_the_key_follows_everything_it_depends_on(tmp_path):
    cache = MapCache(tmp_path, limit=2**20)
    image = noise(1)
    image.info["openpose"] = '{"people": []}'
    cache.put("k", image)
    back = cache.get("k")
    assert back.info == {"openpose": '{"people": []}'} and DIGEST not in back.info

    class Plugin:
        version, api_version = "1.0", "2.0"

    base = dict(memory_key="m", plugin=Plugin(), size=(64, 64), device="cpu", dtype="float32", annotators={"a": 1})
    key = disk_key(**base)
    assert disk_key(**base) == key
    changed = [dict(memory_key="n"), dict(size=(64, 128)), dict(size=None), dict(device="cuda:0"),
               dict(dtype="float16"), dict(annotators={"a": 2})]
    assert len({disk_key(**base | c) for c in changed} | {key}) == len(changed) + 1
    Plugin.version = "1.1"
    assert disk_key(**base) != key


def test_settings_read_the_cache_folder_and_bound(tmp_path):
    assert Settings.from_env({"SDCOMPOSE_HOME": str(tmp_path)}).map_cache == tmp_path / "control-maps"
    assert Settings.from_env({"SDCOMPOSE_HOME": str(tmp_path)}).map_cache_bytes() == 256 * 2**20
    assert Settings.from_env({"SDCOMPOSE_MAP_CACHE": "off"}).map_cache is None
    assert Settings.from_env({"SDCOMPOSE_MAP_CACHE_MB": "16"}).map_cache_bytes() == 16 * 2**20


def _png(image: Image.Image) -> bytes:
    from io import BytesIO
    buffer = BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
