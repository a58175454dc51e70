"""Encoder weights from files: resolution, timm tags, list/tuple preprocessing, local-dir identity, damaged
open_clip_config.json, refused pickles and the mismatch messages (QA round 18); every torch suffix, linked hub
snapshots, unreadable files, ResNet towers and messages against older caches (QA round 22).

CPU and offline: the tiny open_clip ViT and timm's resnet18 (built, never downloaded).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from saga.cache.provenance import EncoderSpec, cache_provenance, first_difference
from saga.cache.store import FeatureCache
from saga.errors import SagaError
from saga.pipeline import encoders
from saga.pipeline.encoder_files import check_resolution, check_timm_tags, encoder_for_size, pos_embed_shape
from saga.pipeline.encoders import DEMO_ENCODER, TEST_ENCODER, canonical_transform, load_encoder
from saga.predict import run_encoder
from saga.taxonomy import Taxonomy

HALF = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
SAMPLING = {"frames": 4, "mode": "consecutive", "windows": 1}


class NotATensor:
    """Anything a weights_only unpickler must refuse."""


def _refused(encoder: str, pretrained: str | None, *needles: str) -> str:
    with pytest.raises(SagaError) as info:
        load_encoder(encoder, pretrained)
    message = str(info.value)
    assert message and "\n" not in message, message
    for needle in needles:
        assert needle in message, message
    return message


def _tiny_state(image_size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    import open_clip

    encoders._register_configs()
    cfg = open_clip.get_model_config(TEST_ENCODER)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**{**cfg, "vision_cfg": {**cfg["vision_cfg"], "image_size": image_size}})
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _save(sd: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path


def _model_dir(folder: Path, preprocess: dict, sd: dict[str, torch.Tensor] | None = None) -> Path:
    """A saved open_clip model as local-dir: and the hub hold it: weights + open_clip_config.json."""
    import open_clip

    encoders._register_configs()
    _save(sd if sd is not None else _tiny_state(), folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": open_clip.get_model_config(TEST_ENCODER), "preprocess_cfg": preprocess}))
    return folder


def _spec(enc: encoders.FrameEncoder) -> EncoderSpec:
    return EncoderSpec.from_dict({**enc.provenance(), "sampling": SAMPLING})


# -- 1. weights of another resolution --------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_weights_of_another_resolution_are_refused_not_resized(tmp_path: Path, suffix: str) -> None:
    path = _save(_tiny_state(image_size=48), tmp_path / f"tiny48{suffix}")
    _refused(TEST_ENCODER, str(path), str(path), "48 px", "32 px", "(37, 32)", "resize")
    folder = _model_dir(tmp_path / "ld48", {}, _tiny_state(image_size=48))
    _refused(f"local-dir:{folder}", None, "open_clip_model.safetensors", "48 px")
    same = _save(_tiny_state(image_size=32), tmp_path / f"tiny32{suffix}")
    assert load_encoder(TEST_ENCODER, str(same)).image_size == (32, 32)  # its own resolution still loads


def test_the_refusal_names_the_encoder_of_that_resolution() -> None:
    assert encoder_for_size("ViT-L-14", 336) == "ViT-L-14-336"  # from the configs alone, nothing is built
    assert encoder_for_size("ViT-L-14-336", 224) == "ViT-L-14"
    assert encoder_for_size(TEST_ENCODER, 48) is None


# -- 2. timm: a bare name whose tags preprocess differently ------------------------------------------------
def test_a_bare_timm_name_with_disagreeing_tags_refuses_a_weights_file(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = _save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "r18.safetensors")
    _refused("timm:resnet18", str(path), "a1_in1k", "tv_in1k", "--encoder timm:resnet18.TAG")
    tagged = load_encoder("timm:resnet18.tv_in1k", str(path)).provenance()["preprocess"]
    assert "Resize(size=256, interpolation=bilinear" in tagged  # the tag's own transform
    assert load_encoder("timm:resnet18", "none").pretrained == "none"  # no weights: nothing to mismatch
    check_timm_tags(DEMO_ENCODER.removeprefix("timm:"), "demo")  # one tag (in1k): the demo's file/pkg load


# -- 3 and 4. the same model named another way ---------------------------------------------------------------
def test_lists_and_tuples_in_the_preprocessing_compare_equal(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m", HALF)
    from_dir = load_encoder(f"local-dir:{folder}", None)
    from_file = load_encoder(TEST_ENCODER, str(folder / "open_clip_model.safetensors"))  # config beside it
    assert from_dir.provenance()["preprocess"] == from_file.provenance()["preprocess"]
    assert "mean=(0.5, 0.5, 0.5)" in from_dir.provenance()["preprocess"]
    assert _spec(from_dir).differences(_spec(from_file)) == []
    old = EncoderSpec.from_dict({**from_dir.provenance(), "sampling": SAMPLING,  # as an older cache recorded it
                                 "preprocess": from_dir.provenance()["preprocess"].replace("(0.5, 0.5, 0.5)",
                                                                                           "[0.5, 0.5, 0.5]")})
    assert "[0.5" in old.preprocess and old.differences(_spec(from_file)) == []
    from torchvision.transforms import Normalize

    as_list, as_tuple = Normalize([0.5] * 3, [0.5] * 3), Normalize((0.5,) * 3, (0.5,) * 3)
    assert canonical_transform(as_list) == canonical_transform(as_tuple)
    assert "tensor([0.5000" in canonical_transform(Normalize(torch.full((3,), 0.5), torch.full((3,), 0.5)))


def test_a_local_dir_is_the_same_encoder_however_its_path_is_typed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _model_dir(tmp_path / "ldm", {})
    monkeypatch.chdir(tmp_path)
    specs = [_spec(load_encoder(name, None)) for name in ("local-dir:ldm", f"local-dir:{tmp_path}/ldm",
                                                          "local-dir:./ldm")]
    assert all(s.differences(specs[0]) == [] for s in specs)
    root, tax = tmp_path / "c", Taxonomy.load("synth")
    FeatureCache.create_or_open(root, cache_provenance(specs[0], tax))
    FeatureCache.create_or_open(root, cache_provenance(specs[1], tax))  # appended, not refused
    # an older cache recorded no architecture: its typed name counts, a local-dir: by its resolved folder
    older = [EncoderSpec.from_dict({**s.to_dict(), "architecture": None}) for s in specs]
    assert all(s.differences(older[0]) == [] for s in older + specs)
    assert "encoder" in EncoderSpec.from_dict({**older[0].to_dict(), "encoder": TEST_ENCODER,
                                               "pretrained": "x"}).differences(older[0])


def test_hf_hub_and_local_dir_of_its_download_are_one_encoder(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--qa--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = _model_dir(repo / "snapshots" / "abc123", HALF)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub, local = (_spec(load_encoder(name, None)) for name in ("hf-hub:qa/tiny", f"local-dir:{snapshot}"))
    assert hub.encoder != local.encoder and hub.differences(local) == []


def test_another_architecture_under_the_same_name_is_another_encoder(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m", {})
    before = _spec(load_encoder(f"local-dir:{folder}", None))
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["vision_cfg"]["pool_type"] = "avg"  # no new tensor: the fingerprint cannot tell
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    after = _spec(load_encoder(f"local-dir:{folder}", None))
    assert after.weights_fingerprint == before.weights_fingerprint and after.differences(before) == ["encoder"]
    root, tax = tmp_path / "c", Taxonomy.load("synth")
    FeatureCache.create_or_open(root, cache_provenance(before, tax))
    with pytest.raises(SagaError, match=r"refusing to append: the cache was built with encoder=.*open_clip:"):
        FeatureCache.create_or_open(root, cache_provenance(after, tax))


# -- 5. a damaged open_clip_config.json ------------------------------------------------------------------
@pytest.mark.parametrize("content,needle", [
    ('{"preprocess_cfg": ', "unreadable"),
    ("[1, 2]", "JSON object"),
    ('{"preprocess_cfg": {"mean": 0.5}}', "list of 3 numbers"),
    ('{"model_cfg": []}', "model_cfg must be an object"),
    ('{"model_cfg": {"quick_gelu": "yes"}}', "true or false"),
    ('{"preprocess_cfg": {"interpolation": 3}}', "must be text"),
])
def test_a_damaged_config_beside_the_weights_is_one_line_naming_it(tmp_path: Path, content: str,
                                                                   needle: str) -> None:
    path = _save(_tiny_state(), tmp_path / "w.safetensors")
    (tmp_path / "open_clip_config.json").write_text(content)
    _refused(TEST_ENCODER, str(path), str(tmp_path / "open_clip_config.json"), needle)


def test_a_damaged_config_in_a_local_dir_is_one_line_naming_it(tmp_path: Path) -> None:
    folder = _model_dir(tmp_path / "m", {})
    (folder / "open_clip_config.json").write_text('{"model_cfg": ')
    _refused(f"local-dir:{folder}", None, str(folder / "open_clip_config.json"), "unreadable")


# -- 6a. a pickle weights_only refuses ----------------------------------------------------------------------
def test_a_refused_pickle_says_so_without_an_architecture_hint(tmp_path: Path) -> None:
    bad = {**_tiny_state(), "extra": NotATensor()}
    for path in (tmp_path / "unsafe.pt", tmp_path / "unsafe.bin"):
        torch.save(bad, path)
        message = _refused(TEST_ENCODER, str(path), f"refused: {path} holds code/objects besides tensors",
                           "NotATensor", "save a plain state_dict (or safetensors)")
        assert "architecture" not in message
    _refused(DEMO_ENCODER, str(tmp_path / "unsafe.pt"), "refused:", "besides tensors")
    (tmp_path / "ld").mkdir()
    torch.save(bad, tmp_path / "ld" / "open_clip_pytorch_model.bin")
    (tmp_path / "ld" / "open_clip_config.json").write_text(
        (_model_dir(tmp_path / "ok", {}) / "open_clip_config.json").read_text())
    _refused(f"local-dir:{tmp_path / 'ld'}", None, "open_clip_pytorch_model.bin holds code/objects")


# -- 6b. mismatch messages --------------------------------------------------------------------------------
def test_predict_shows_where_the_preprocessing_differs_and_keeps_the_weights(tmp_path: Path) -> None:
    weights = _save(_tiny_state(), tmp_path / "run" / "w.safetensors")
    info = SimpleNamespace(encoder=_spec(load_encoder(TEST_ENCODER, str(weights))), path=tmp_path / "run")
    _model_dir(tmp_path / "pp", HALF)
    with pytest.raises(SagaError) as err:  # the same weights, a config beside them with other mean/std
        run_encoder(info, "cpu", TEST_ENCODER, str(tmp_path / "pp" / "open_clip_model.safetensors"))
    message = str(err.value)
    assert "mean=(0.48145466" in message and "mean=(0.5, 0.5, 0.5)" in message, message
    assert "the weights are the run's" in message and "with the run's weights" not in message
    other = _save(_tiny_state(seed=1), tmp_path / "other.safetensors")
    with pytest.raises(SagaError, match=r"weights_fingerprint .*pass --encoder/--pretrained with the run's weights"):
        run_encoder(info, "cpu", TEST_ENCODER, str(other))


def test_an_append_refusal_shows_where_the_preprocessing_differs(tmp_path: Path) -> None:
    tax, prefix = Taxonomy.load("synth"), "Compose( Resize(size=32) " * 6
    spec = EncoderSpec("x", "none", "f", prefix + "Normalize(mean=(0.48, 0.45))", 8, SAMPLING)
    FeatureCache.create_or_open(tmp_path / "c", cache_provenance(spec, tax))
    other = EncoderSpec("x", "none", "f", prefix + "Normalize(mean=(0.5, 0.5))", 8, SAMPLING)
    with pytest.raises(SagaError) as err:
        FeatureCache.create_or_open(tmp_path / "c", cache_provenance(other, tax))
    assert "mean=(0.48, 0.45)" in str(err.value) and "mean=(0.5, 0.5)" in str(err.value), str(err.value)


# -- QA round 22 ----------------------------------------------------------------------------------------------
# 1. open_clip torch.loads every file but .npz/.npy: the resolution check must read them all.
@pytest.mark.parametrize("name", ["w48.pth.tar", "w48", "w48.pkl"])
def test_weights_of_another_resolution_are_refused_whatever_the_suffix(tmp_path: Path, name: str) -> None:
    path = _save(_tiny_state(image_size=48), tmp_path / name)
    _refused(TEST_ENCODER, str(path), str(path), "48 px", "32 px")
    assert pos_embed_shape(tmp_path / "big_vision.npz") is None  # open_clip's numpy path: not read here


# 2. a Hugging Face cache snapshot holds links into blobs/ (no suffix there, no open_clip_config.json beside)
def _linked_snapshot(repo: Path, weights: str, sd: dict[str, torch.Tensor]) -> Path:
    import open_clip

    encoders._register_configs()
    blobs, snapshot = repo / "blobs", repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    _save(sd, blobs / f"w{Path(weights).suffix}").rename(blobs / "6f1e2a")  # a blob has no suffix
    (blobs / "c0ffee").write_text(json.dumps({"model_cfg": open_clip.get_model_config(TEST_ENCODER),
                                              "preprocess_cfg": HALF}))
    os.symlink("../../blobs/6f1e2a", snapshot / weights)
    os.symlink("../../blobs/c0ffee", snapshot / "open_clip_config.json")
    return snapshot


@pytest.mark.parametrize("weights", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_weights_in_a_linked_hub_snapshot_keep_their_format_and_settings(tmp_path: Path, weights: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--qa--tiny"
    snapshot = _linked_snapshot(repo, weights, _tiny_state())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    from_file = _spec(load_encoder(TEST_ENCODER, str(snapshot / weights)))
    assert "mean=(0.5, 0.5, 0.5)" in from_file.preprocess  # the config beside the link, not blobs/
    for name in ("hf-hub:qa/tiny", f"local-dir:{snapshot}"):
        assert _spec(load_encoder(name, None)).differences(from_file) == [], name


def test_timm_weights_in_a_linked_hub_snapshot_load(tmp_path: Path) -> None:
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    snapshot = _linked_snapshot(tmp_path / "models--timm--resnet18", "model.safetensors", sd)
    assert load_encoder("timm:resnet18.tv_in1k", str(snapshot / "model.safetensors")).dim == 512


# 3. a file that is no pickle at all is not "code/objects"
def _unreadable(folder: Path, kind: str) -> Path:
    full = _save(_tiny_state(), folder / "full.pt")
    data = {"random.pt": bytes(range(256)) * 16, "lfs.bin": b"version https://git-lfs.github.com/spec/v1\n"
            b"oid sha256:abc\nsize 123\n", "cut.pt": full.read_bytes()[:3000]}
    path = folder / kind
    if kind == "named.pt":
        from safetensors.torch import save_file

        save_file(_tiny_state(), str(path))
    else:
        path.write_bytes(data[kind])
    return path


@pytest.mark.parametrize("kind,needle", [("random.pt", "Unsupported operand"), ("lfs.bin", "run `git lfs pull`"),
                                         ("named.pt", "rename it to end in .safetensors"),
                                         ("cut.pt", "zip archive")])
@pytest.mark.parametrize("encoder", [TEST_ENCODER, "timm:resnet18.tv_in1k"])
def test_an_unreadable_file_is_not_called_a_refused_pickle(tmp_path: Path, kind: str, needle: str,
                                                           encoder: str) -> None:
    path = _unreadable(tmp_path, kind)
    message = _refused(encoder, str(path), f"{path}: not a loadable weights file", needle)
    assert "code/objects" not in message and "architecture" not in message


# 4. open_clip's ResNet towers keep image_size as an int
def test_an_open_clip_resnet_tower_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory

    encoders._register_configs()
    tiny_rn = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8},
               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "saga-test-rn", tiny_rn)
    enc = load_encoder("saga-test-rn", "none")
    assert isinstance(enc.model.image_size, int) and enc.image_size == (32, 32) and enc.dim == 16
    visual = SimpleNamespace(positional_embedding=torch.zeros(17, 32), image_size=32, grid_size=(4, 4),
                             patch_size=(8, 8))
    with pytest.raises(SagaError, match=r"trained at 48 px .* this model takes 32 px"):
        check_resolution("x", "w.pt", (37, 32), visual, TEST_ENCODER)


# 5. an older cache (no architecture): the refusal shows what was compared, and no word cut in two
def test_an_append_refusal_against_an_older_cache_shows_the_folders(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    specs = []
    for side in ("a", "b"):
        _model_dir(tmp_path / side / "ldm", {})
        monkeypatch.chdir(tmp_path / side)
        specs.append(_spec(load_encoder("local-dir:ldm", None)))
    older = EncoderSpec.from_dict({**specs[0].to_dict(), "architecture": None})
    tax = Taxonomy.load("synth")
    FeatureCache.create_or_open(tmp_path / "c", cache_provenance(older, tax))
    with pytest.raises(SagaError) as err:
        FeatureCache.create_or_open(tmp_path / "c", cache_provenance(specs[1], tax))
    message = str(err.value)
    found = re.search(r"built with encoder=(\S+), this run uses (\S+); extract", message)
    assert found and "open_clip:" not in message, message
    for shown, side in zip(found.groups(), "ab"):  # the resolved folders, whole or cut after a "/"
        full = f"local-dir:{tmp_path / side / 'ldm'}"
        assert shown == full or (shown.startswith("...") and full.endswith(f"/{shown[3:]}")), message


def test_a_long_value_without_spaces_is_not_cut_inside_a_word() -> None:
    folder = "local-dir:" + "/a-long-folder-name" * 5
    mine, theirs = first_difference(f"{folder}/a/ldm", f"{folder}/b/ldm")
    assert mine == "...a-long-folder-name/a-long-folder-name/a/ldm" and theirs.endswith("/b/ldm"), mine
    assert first_difference("local-dir:/x/a/ldm", "local-dir:/x/b/ldm") == ("local-dir:/x/a/ldm",
                                                                           "local-dir:/x/b/ldm")
