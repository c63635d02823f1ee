"""models.yaml with unknown keys, wrong types, object-building tags, paths escaping the models root:
a CatalogError naming the file, the line and the key; nothing is executed or loaded."""
from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest

import sdcompose
from sdcompose.pipelines.catalog import Catalog, read_catalog


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / f"models-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(textwrap.dedent(body).lstrip())
    return path


def refused(path: Path, line: int, key: str, *words: str) -> str:
    with pytest.raises(sdcompose.CatalogError) as err:
        read_catalog(path)
    message = str(err.value)
    assert message.startswith(f"{path}:{line}: {key}: "), message
    for word in words:
        assert word in message, message
    return message


def test_unknown_key_named_with_file_line_and_key(tmp_path):
    path = write(tmp_path, """
        version: 1
        models:
          mine:
            kind: base
            family: sd15
            path: mine
            revison: abc
        """)
    refused(path, 7, "models.mine.revison", "Extra inputs are not permitted")


def test_unknown_top_level_key(tmp_path):
    refused(write(tmp_path, "version: 1\nmodels: {}\nplugins: [x]\n"), 3, "plugins", "Extra inputs")


@pytest.mark.parametrize("field,value,line_key", [
    ("tiny", "'maybe'", "models.mine.tiny"),
    ("family", "sd3", "models.mine.family"),
    ("trigger_words", "{a: 1}", "models.mine.trigger_words"),
    ("sha256", "1234", "models.mine.sha256"),
])
def test_wrong_types_named_with_file_line_and_key(tmp_path, field, value, line_key):
    path = write(tmp_path, f"""
        version: 1
        models:
          mine:
            kind: base
            family: sd15
            path: mine
            {field}: {value}
        """)
    if field == "family":  # replaces the earlier family key: that is a duplicate, refused on its own
        path.write_text(path.read_text().replace("    family: sd15\n", ""))
        refused(path, 6, line_key)
    else:
        refused(path, 7, line_key)


def test_python_object_tag_refused_and_never_run(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    path = write(tmp_path, f"""
        version: 1
        models:
          mine:
            kind: base
            family: sd15
            path: mine
            description: !!python/object/apply:os.system ["touch {sentinel}"]
        """)
    refused(path, 7, "models.mine.description", "python/object/apply:os.system", "plain data")
    with pytest.raises(sdcompose.CatalogError):
        sdcompose.Pipeline(path, device="cpu")
    assert not sentinel.exists()


@pytest.mark.parametrize("tag", ["!!python/name:os.system", "!!python/module:os",
                                 "!!python/object/new:os.system [echo]"])
def test_other_tags_refused(tmp_path, tag):
    path = write(tmp_path, f"version: 1\nmodels:\n  mine:\n    kind: base\n    family: sd15\n    path: {tag}\n")
    with pytest.raises(sdcompose.CatalogError, match=rf"{path}:6: models.mine.path: "):
        read_catalog(path)


@pytest.mark.parametrize("field,value", [
    ("path", "../outside"), ("path", "a/../../outside"), ("path", "/etc"), ("path", "~/models"),
    ("file", "../../w.safetensors"), ("config", "../configs"),
])
def test_paths_escaping_the_models_root(tmp_path, field, value):
    source = "path: inside" if field not in ("path", "file") else ""
    extra = "sha256: '" + "0" * 64 + "'" if field == "file" else ""
    path = write(tmp_path, f"""
        version: 1
        models:
          mine:
            kind: lora
            family: sd15
            {field}: {value}
            {source}
            {extra}
        """)
    if field == "config":
        path.write_text(path.read_text().replace("kind: lora", "kind: controlnet").replace("path: inside", "")
                        + "    file: cn.safetensors\n    sha256: '" + "0" * 64 + "'\n")
    refused(path, 6, f"models.mine.{field}", "must be a relative path inside the models root")


def test_symlink_out_of_the_models_root(tmp_path, home):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "w.safetensors").write_bytes(b"\0" * 16)
    link = home / "models" / f"link-{uuid.uuid4().hex[:6]}"
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, link)
    path = write(tmp_path, f"""
        version: 1
        models:
          linked:
            kind: base
            family: sd15
            path: {link.name}
        """)
    with pytest.raises(sdcompose.CatalogError) as err:
        Catalog(path)
    message = str(err.value)
    assert message.startswith(f"{path}:6: models.linked.path: ") and "outside the models root" in message


def test_symlink_inside_a_model_folder_pointing_out(pipe, tmp_path, home):
    """A folder under the root whose weights are a symlink to a file elsewhere is refused before loading."""
    import shutil
    folder = home / "models" / f"base-{uuid.uuid4().hex[:6]}"
    shutil.copytree(pipe.loader.path(pipe.catalog.get("tiny-sd15")), folder)
    outside = tmp_path / "unet.safetensors"
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(outside)
    os.symlink(outside, folder / "unet" / "diffusion_pytorch_model.safetensors")
    path = write(tmp_path, f"version: 1\nmodels:\n  b:\n    kind: base\n    family: sd15\n    path: {folder.name}\n")
    p = sdcompose.Pipeline(path, device="cpu")
    with pytest.raises(sdcompose.ModelError, match="outside the models root"):
        p.generate(model="b", width=64, height=64, steps=2, seed=1)
    assert p.cache.loaded()["base"] == []


def test_duplicate_ids_refused(tmp_path):
    path = write(tmp_path, """
        version: 1
        models:
          twin: {kind: base, family: sd15, path: a}
          twin: {kind: base, family: sd15, path: b}
        """)
    refused(path, 4, "models.twin", "duplicate key")


@pytest.mark.parametrize("body,line,what", [
    ("models: [1, 2]\n", 1, "models"),
    ("- just\n- a list\n", 1, "top level"),
    ("version: 2\nmodels: {}\n", 1, "version"),
    ("version: 1\nmodels:\n  bad id!:\n    kind: base\n    family: sd15\n    path: x\n", 3, "ids are letters"),
    ("version: 1\nmodels:\n  hub:\n    kind: base\n    family: sd15\n    repo: a/b\n", 3, "pinned `revision`"),
    ("version: 1\nmodels:\n  x: {kind: base, family: sd15, path: a, repo: a/b, revision: '" + "0" * 40 + "'}\n",
     3, "exactly one source"),
    ("version: 1\nmodels: {\n", 3, "expected"),
])
def test_malformed_files_name_the_line(tmp_path, body, line, what):
    path = tmp_path / "models.yaml"
    path.write_text(body)
    with pytest.raises(sdcompose.CatalogError) as err:
        read_catalog(path)
    assert str(err.value).startswith(f"{path}:{line}") and what in str(err.value), str(err.value)


def test_unreadable_huge_and_deep_files(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00models")
    deep = tmp_path / "deep.yaml"
    deep.write_text("version: 1\nmodels: " + "[" * 20000 + "]" * 20000 + "\n")
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * 5_100_000)
    for path in (binary, deep, huge):
        with pytest.raises(sdcompose.CatalogError, match=str(path)):
            read_catalog(path)


def test_user_overlay_error_names_the_user_file(tmp_path, monkeypatch):
    user = write(tmp_path, "version: 1\nmodels:\n  x:\n    kind: nonsense\n")
    monkeypatch.setenv("SDCOMPOSE_MODELS_YAML", str(user))
    with pytest.raises(sdcompose.CatalogError, match=rf"^{user}:4: models.x.kind: "):
        Catalog()
