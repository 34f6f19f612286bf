"""Checking an artifact against the Keras model it came from, on real images.

Both run the same images (0-255, resized to the model's side); we report top-1
agreement (same arg-max), the largest absolute output difference (the models end in a
softmax, so this is in probability units), and, with a label map, each one's top-1
accuracy. ``verify`` fails below ``min_agreement``; the defaults (docs/export.md):
float formats 0.99 (float32 and float16 arithmetic flip only near-ties), int8 0.90
(quantisation moves near-ties in several percent of images but must not wreck the model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_MIN_AGREEMENT = {"none": 0.99, "float16": 0.99, "int8": 0.90}


def verify_images(dataset: str, size: int, split: str | None = None, limit: int | None = None,
                  label_map: str | None = None):
    """``(x float32 0-255, model-index labels or None, description)`` of the verification set."""
    from effscale.evaluate import load_images, read_label_map, resize_images, target_indices

    images = load_images(dataset, split=split, limit=limit)
    labels = None
    if label_map:
        targets = target_indices(images, 1000, read_label_map(label_map, dataset), None)
        labels = targets[images.y]
    x = resize_images(images.x, size).astype(np.float32)
    return x, labels, f"{images.name} {images.split} ({len(x)} images)"


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """Agreement, largest output difference and (with labels) top-1 of both."""
    ref_top, cand_top = reference.argmax(axis=1), candidate.argmax(axis=1)
    result = {"images": int(len(reference)), "agreement": float((ref_top == cand_top).mean()),
              "max_abs_diff": float(np.abs(reference - candidate).max()),
              "mean_abs_diff": float(np.abs(reference - candidate).mean())}
    if labels is not None:
        ref_ok, cand_ok = ref_top == labels, cand_top == labels
        result |= {"keras_top1": float(ref_ok.mean()), "artifact_top1": float(cand_ok.mean()),
                   "top1_difference": float(cand_ok.mean() - ref_ok.mean()),
                   "top1_difference_ci": paired_difference_ci(cand_ok, ref_ok)}
    return result


def paired_difference_ci(a: np.ndarray, b: np.ndarray, replicates: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of mean(a) - mean(b), resampling images in pairs:
    both models saw the same images, so only the images where they differ carry noise."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(replicates, len(diff)))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def verify(model, artifact: Path, kind: str, x: np.ndarray, labels=None, min_agreement: float = 0.99,
           threads: int | None = None, batch: int = 32) -> dict:
    """Run Keras and the artifact on ``x``; ``passed`` says whether agreement reaches ``min_agreement``
    (the CLI turns a miss into a non-zero exit)."""
    from effscale.export.runtimes import KerasRunner, runner_for

    reference = KerasRunner(model).predict(x, batch)
    candidate = runner_for(kind, artifact, threads=threads).predict(x, batch)
    result = compare(reference, candidate, labels) | {"min_agreement": min_agreement, "artifact": str(artifact)}
    result["passed"] = result["agreement"] >= min_agreement
    return result


def verification_line(result: dict) -> str:
    line = (f"verify {Path(result['artifact']).name}: top-1 agreement {100 * result['agreement']:.1f}% "
            f"of {result['images']} images (threshold {100 * result['min_agreement']:.1f}%), "
            f"max |diff| {result['max_abs_diff']:.2e}")
    if "keras_top1" in result:
        lo, hi = result["top1_difference_ci"]
        line += (f"; top-1 Keras {100 * result['keras_top1']:.1f}%, artifact {100 * result['artifact_top1']:.1f}% "
                 f"({100 * result['top1_difference']:+.1f} points, 95% CI [{100 * lo:+.1f}, {100 * hi:+.1f}])")
    return line
