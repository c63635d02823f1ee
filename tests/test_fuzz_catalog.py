"""Any models.yaml text -> a catalogue or a CatalogError naming the file; never another exception."""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sdcompose
from sdcompose.pipelines.catalog import Entry, read_catalog

FOLDER = Path(tempfile.mkdtemp(prefix="sdcompose-fuzz-catalog-"))
ROOT = FOLDER / "models"
ROOT.mkdir()

scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
           | st.sampled_from(["sd15", "sdxl", "base", "lora", "controlnet", "annotator", "a/b", "../x", "/abs", "~",
                              "0" * 40, "f" * 64, "sd15/", "x.safetensors", "!!python/object:os.system"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
fields = st.sampled_from(sorted(Entry.model_fields) + ["bogus", "revison"])
entries = st.dictionaries(fields, values, max_size=8)
documents = st.fixed_dictionaries(
    {"models": st.dictionaries(st.text(max_size=12) | st.sampled_from(["tiny", "a-b", "x.y"]), entries, max_size=3)},
    optional={"version": st.sampled_from([1, 2, "1", None]), "extra": values})


def read(text: str):
    path = FOLDER / "models.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        return read_catalog(path, ROOT)
    except sdcompose.CatalogError as exc:
        assert str(exc).startswith(str(path)), str(exc)
        return None


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_any_structure_is_a_catalogue_or_a_catalog_error(document):
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except yaml.YAMLError:
        return
    catalogue = read(text)
    if catalogue is not None:
        for model_id, entry in catalogue.items():
            assert entry.id == model_id and entry.kind in ("base", "controlnet", "lora", "annotator")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300) | st.sampled_from([
    "version: 1\nmodels:\n  a: &x {kind: base, family: sd15, path: a}\n  b: *x\n",
    "version: 1\nmodels: !!python/object/apply:os.system [echo]\n",
    "version: 1\nmodels:\n  <<: {a: 1}\n", "%YAML 1.1\n---\nversion: 1\n---\nmodels: {}\n",
    "version: 1\nmodels:\n  a: {kind: base, family: sd15, path: \"\\0\"}\n", "\t\tmodels:", "models: [" * 50,
]))
def test_any_text_is_a_catalogue_or_a_catalog_error(text):
    read(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["version: 1", "models:", "  x:", "    kind: base", "    family: sd15",
                                 "    path: x", "    tiny: true", "    file: w.safetensors", "  y: {}", "    - 1",
                                 "    sha256: " + "a" * 64, "    config: sd15", "    repo: a/b", "  &a z:", "*a",
                                 "    path: ../../..", "\tkind: lora", "    description: |", "      text"]),
                max_size=12))
def test_near_valid_files_are_a_catalogue_or_a_catalog_error(lines):
    read("\n".join(lines) + "\n")
