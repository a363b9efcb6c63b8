"""The demo model builder (real conversions, cached by content) and the demo corpus."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from guard.corpus import demo_corpus
from guard.engines.llamacpp import read_gguf_metadata
from guard.errors import ConfigError
from guard.models import build_demo_models, llama_cpp_source

pytestmark = pytest.mark.slow

FILE_TYPES = {"F16": 1, "Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15}


def test_builds_every_demo_type(demo_models: dict[str, Path]) -> None:
    assert set(FILE_TYPES) == set(demo_models)
    for name, path in demo_models.items():
        meta = read_gguf_metadata(path)
        assert (FILE_TYPES[name], "bert") == (
            meta["general.file_type"],
            meta["general.architecture"],
        )
        assert name in path.name


def test_a_second_build_is_a_cache_hit(
    demo_models: dict[str, Path], models_cache: Path, llama_cpp_src: Path
) -> None:
    stamps = {name: path.stat().st_mtime_ns for name, path in demo_models.items()}
    started = time.perf_counter()
    again = build_demo_models(models_cache, llama_cpp_src)
    assert demo_models == again
    assert stamps == {name: path.stat().st_mtime_ns for name, path in again.items()}
    assert time.perf_counter() - started < 2.0
    assert not [p for p in models_cache.iterdir() if p.name.endswith(".tmp")]


def test_a_changed_converter_gives_new_files(
    tmp_path: Path, demo_models: dict[str, Path], llama_cpp_src: Path
) -> None:
    """The cache key covers the converter: a modified script is a new build."""
    real = llama_cpp_source(llama_cpp_src)
    fork = tmp_path / "llama.cpp"
    fork.mkdir()
    for entry in real.iterdir():
        if entry.name != "convert_hf_to_gguf.py":
            (fork / entry.name).symlink_to(entry)
    script = (real / "convert_hf_to_gguf.py").read_text()
    (fork / "convert_hf_to_gguf.py").write_text(script + "\n# a local change\n")
    built = build_demo_models(tmp_path / "out", fork)
    assert built["F16"].name != demo_models["F16"].name
    assert built["F16"].read_bytes() == demo_models["F16"].read_bytes()


def test_missing_llama_cpp_sources_say_how_to_fetch_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_demo_models(tmp_path / "out", tmp_path / "nowhere")
    assert "pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36" in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_sources_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, llama_cpp_src: Path
) -> None:
    monkeypatch.setenv("GUARD_LLAMACPP_SRC", str(llama_cpp_src))
    assert llama_cpp_source(None) == llama_cpp_source(llama_cpp_src)


def test_the_sdist_root_works_as_source(tmp_path: Path, llama_cpp_src: Path) -> None:
    """Pointing at an extracted llama-cpp-python archive finds vendor/llama.cpp in it."""
    (tmp_path / "vendor").mkdir()
    (tmp_path / "vendor" / "llama.cpp").symlink_to(llama_cpp_source(llama_cpp_src))
    assert tmp_path / "vendor" / "llama.cpp" == llama_cpp_source(tmp_path)


def test_demo_corpus_is_distinct_clean_paragraphs() -> None:
    texts = demo_corpus()
    assert len(texts) > 1000
    assert len(texts) == len(set(texts))
    assert all(text == " ".join(text.split()) and len(text.split()) >= 8 for text in texts)
    assert texts[:50] == demo_corpus(50)
    assert texts == demo_corpus()


def test_demo_corpus_has_texts_past_the_reference_limit(long_texts: list[str]) -> None:
    assert len(long_texts) >= 10
