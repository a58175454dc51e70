"""A run's recorded encoder loaded again, or the user's override of it, checked to be the run's weights.

`saga predict` and `saga robustness` both extract new features for a trained run, so both need the
very encoder the run was trained on. The recorded one is loaded by default; when its `local-dir:` folder
moved (or its weights file), `--encoder` / `--pretrained` name the new place, and the loaded encoder must
then give the run's features (`IDENTITY_KEYS`: weights fingerprint, preprocessing, dim, activation).
"""

from __future__ import annotations

from saga.cache.provenance import IDENTITY_KEYS, EncoderSpec, first_difference
from saga.errors import SagaError
from saga.pipeline.encoders import FrameEncoder, load_encoder, recorded_encoder
from saga.progress import ProgressFn, report_encoder

MOVED_FIX = "pass --encoder local-dir:NEWPATH (its new place; the weights are checked against the run's)"


def encoder_source(spec: EncoderSpec, where: str, encoder: str | None = None,
                   pretrained: str | None = None) -> tuple[str, str | None]:
    """(name, pretrained) to load: each override as given, else the recorded one (a gone folder: one line)."""
    name = encoder or recorded_encoder(spec.encoder, spec.pretrained, where, MOVED_FIX)
    return name, pretrained or spec.pretrained


def check_identity(want: EncoderSpec, enc: FrameEncoder, where: str) -> None:
    """Refuse, in one line, an encoder that does not give the features of `want` (the run's)."""
    got = EncoderSpec.from_dict(enc.provenance(), "the loaded encoder")
    for key in want.differences(got, IDENTITY_KEYS)[:1]:
        run_value, this_value = first_difference(getattr(want, key), getattr(got, key))
        fix = ("pass --encoder/--pretrained with the run's weights" if key == "weights_fingerprint" else
               f"the weights are the run's but give other features: load them as the run did (--encoder "
               f"{want.encoder} --pretrained {want.pretrained}), or with the run's settings "
               "(open_clip_config.json beside the file)")
        raise SagaError(f"{where}: encoder mismatch: the run was trained on {want.encoder} features with "
                        f"{key} {run_value}, this encoder gives {this_value}; {fix}")


def checked_encoder(want: EncoderSpec, where: str, device: str, encoder: str | None = None,
                    pretrained: str | None = None, progress: ProgressFn | None = None) -> FrameEncoder:
    """The run's encoder (`want`, recorded in the run folder `where`), or the overrides, checked against it;
    `progress` gets the loading's status event."""
    source = encoder_source(want, where, encoder, pretrained)
    report_encoder(progress, *source)
    enc = load_encoder(*source, device)
    check_identity(want, enc, where)
    return enc
