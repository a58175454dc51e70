"""Beyond closed-set attribution (issue #13): open-set rejection, few-shot enrollment, calibration.

Everything here works on a finished run and a feature cache: the trained embedding φ is reused
(never retrained), and what is learnt (prototypes, thresholds, a temperature) is stored beside
the run as data (JSON + safetensors, written atomically), never pickle. See docs/beyond.md.

- `calibration`: temperature scaling on validation logits, ECE and reliability diagrams;
- `embeddings`: φ of cache records with the evaluation convention, class prototypes;
- `openset`: unknown-source scores (nearest prototype, k-NN), threshold, AUROC, OSCR;
- `enroll`: few-shot classes as prototypes, and prediction with the head plus them;
- `holdout`: train a run without some classes (leave-one-generator-out), or with few of their videos.
"""
