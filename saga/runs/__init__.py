"""Run folders (docs/run-folder.md): what a training run writes, resumes from and is loaded from.

The package is split by concept; every public name is re-exported here, so callers keep
writing `from saga.runs import X`:

- `files`: the file names, JSON and safetensors readers and writers (never pickle);
- `origin`: what a run was trained on (cache id, records digest, seals) and changed caches;
- `checkpoint`: the resume point, committed as one unit, rolled forward or back after a kill;
- `folder`: `RunFolder`, created, resumed or reused, refusing someone else's run;
- `loading`: `load_model` and the checks on hostile weights metadata and config.json.
"""

from __future__ import annotations

from saga.runs.checkpoint import flatten_optimizer, load_state, recover, restore_optimizer, save_state
from saga.runs.files import (
    CKPT_COMMIT,
    CKPT_NEW,
    CONFIG,
    DONE,
    EVALUATION,
    HELDOUT,
    LABELLED,
    LAST,
    METRICS,
    MODEL,
    OPTIMIZER,
    PROVENANCE,
    RESUME_FILES,
    STATE,
    TSIG,
    TSIG_CSV,
    TSIG_MAPS,
    TSIG_PROFILES,
    TSNE_GLOB,
    by_split,
    cache_tag,
    evaluation_file,
    file_fingerprint,
    load_tensors,
    on_cache,
    read_json,
    recorded_options,
    save_tensors,
    save_weights,
    tsne_file,
)
from saga.fileio import atomic_path, write_json, write_text
from saga.runs.folder import RunFolder
from saga.runs.loading import (MODEL_LIMITS, RunInfo, build_model, check_cache, heldout_tag, load_model,
                               read_model_config)
from saga.runs.origin import (
    accept_changed_cache,
    cache_change,
    cache_digest,
    check_cache_seals,
    encoder_provenance,
    make_provenance,
    records_digest,
    trained_by_other_code,
)
from saga.cache.store import unsealed_parts

__all__ = [
    "CKPT_COMMIT", "CKPT_NEW", "CONFIG", "DONE", "EVALUATION", "HELDOUT", "LABELLED", "LAST", "METRICS", "MODEL",
    "MODEL_LIMITS", "OPTIMIZER", "PROVENANCE", "RESUME_FILES", "STATE", "TSIG", "TSIG_CSV", "TSIG_MAPS",
    "TSIG_PROFILES", "TSNE_GLOB", "RunFolder", "RunInfo", "accept_changed_cache", "atomic_path", "build_model",
    "by_split", "cache_change", "cache_digest", "cache_tag", "check_cache", "check_cache_seals", "encoder_provenance", "evaluation_file",
    "file_fingerprint",
    "flatten_optimizer", "heldout_tag", "load_model", "load_state", "load_tensors", "make_provenance", "on_cache",
    "read_json",
    "read_model_config", "records_digest", "recorded_options",
    "recover", "restore_optimizer", "save_state", "save_tensors", "save_weights",
    "trained_by_other_code", "tsne_file", "unsealed_parts", "write_json", "write_text",
]
