"""How much of each modality's planted signal a linear read-out of pooled inputs recovers.

    python -m benchmarks.planted_probe          # the campaign's Table-3 data: seconds on one CPU
    python -m benchmarks.planted_probe --smoke  # a tiny BERT and a few clips (tests)

A diagnostic for Table 3 on planted data (``benchmarks.campaign``, table ``table3``): the planted
pickle keeps each modality's hidden component (``data['latents']``: ``y_t``, ``y_a``, ``y_v``), so
one can ask, before any model, how much of it a linear map of *pooled* inputs can read:

- text: the frozen text encoder's last hidden state, mean-pooled over the attention mask (what a
  model with ``finetune_bert=False`` starts from), against ``y_t``;
- audio / vision: the frames' masked mean, and the masked mean and max side by side (the bursts sit
  on a few frames, which a mean buries), against ``y_a`` / ``y_v``;
- pairs and all three as an additive model (the sum of their own read-outs), against the label
  ``y``, beside the noise floor (the MAE of ``y_t + y_a + y_v``).

Each read-out is ridge regression fitted on the training split, its penalty chosen on validation
from a fixed grid, and scored on test (R² against the component, and the MAE of the label
predicted from that modality alone).  Nothing is chosen for a model here.
"""
from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from . import common
from .common import Timer

logger = logging.getLogger("MMSA")

#: ridge penalties tried (chosen on validation), relative to the mean squared feature norm
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
SPLITS = ("train", "valid", "test")
COMPONENT = {"text": "y_t", "audio": "y_a", "vision": "y_v"}


def ridge_fit_predict(x: Dict[str, np.ndarray], y: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], float]:
    """Ridge regression of ``y['train']`` on ``x['train']`` (standardised features, an intercept),
    the penalty chosen by validation MSE; returns the predictions on every split and the penalty."""
    mean, std = x["train"].mean(0), x["train"].std(0) + 1e-8
    z = {s: (x[s] - mean) / std for s in SPLITS}
    dim = z["train"].shape[1]
    best: Optional[Tuple[float, float, Dict[str, np.ndarray]]] = None
    for penalty in PENALTIES:
        lam = penalty * len(z["train"])
        w = np.linalg.solve(z["train"].T @ z["train"] + lam * np.eye(dim), z["train"].T @ (y["train"] - y["train"].mean()))
        pred = {s: z[s] @ w + y["train"].mean() for s in SPLITS}
        mse = float(np.mean((pred["valid"] - y["valid"]) ** 2))
        if best is None or mse < best[0]:
            best = (mse, penalty, pred)
    assert best is not None
    return best[2], best[1]


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    return float(1.0 - np.sum((pred - target) ** 2) / np.sum((target - target.mean()) ** 2))


def pooled_frames(split: Mapping[str, np.ndarray], modality: str, with_max: bool) -> np.ndarray:
    """Masked mean (and max) over each sample's valid frames: padding is excluded by the lengths."""
    frames, lengths = split[modality].astype(np.float64), split[f"{modality}_lengths"]
    valid = np.arange(frames.shape[1])[None, :] < lengths[:, None]                 # (b, n)
    mean = (frames * valid[..., None]).sum(1) / lengths[:, None]
    if not with_max:
        return mean
    peak = np.where(valid[..., None], frames, -np.inf).max(1)
    return np.concatenate([mean, peak], axis=1)


def text_features(splits: Mapping[str, Mapping[str, np.ndarray]], encoder: Path) -> Dict[str, np.ndarray]:
    """The frozen encoder's last hidden state, mean-pooled over the attention mask (eval mode)."""
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(str(encoder)).eval()
    out = {}
    with torch.no_grad():
        for s in SPLITS:
            ids = torch.as_tensor(splits[s]["text_bert"][:, 0], dtype=torch.long)
            mask = torch.as_tensor(splits[s]["text_bert"][:, 1], dtype=torch.long)
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state          # (b, n, d)
            out[s] = ((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).double().numpy()
    return out


def splits_digest(data: Mapping[str, Mapping[str, np.ndarray]]) -> str:
    """SHA-256 over the train/valid/test arrays (names, shapes, dtypes, bytes): the data's content,
    independent of the ``meta`` the file also holds (which records where it was written)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for key in sorted(data[split]):
            arr = np.ascontiguousarray(data[split][key])
            digest.update(f"{split}/{key}/{arr.shape}/{arr.dtype}".encode())
            digest.update(arr.tobytes() if arr.dtype != object else repr(arr.tolist()).encode())
    return digest.hexdigest()


def probe(data: Mapping[str, object], encoder: Path) -> Tuple[str, Dict[str, Dict[str, float]]]:
    """The probe table (markdown) and its numbers {read-out: {'r2': .., 'mae': .., 'penalty': ..}}."""
    splits = {s: data[s] for s in SPLITS}
    latents = data["latents"]
    label = {s: splits[s]["regression_labels"].astype(np.float64) for s in SPLITS}
    text = text_features(splits, encoder)
    feats = {
        ("text", "y_t", "encoder output, mean over tokens"): text,
        ("audio", "y_a", "frames, mean"): {s: pooled_frames(splits[s], "audio", False) for s in SPLITS},
        ("audio", "y_a", "frames, mean and max"): {s: pooled_frames(splits[s], "audio", True) for s in SPLITS},
        ("vision", "y_v", "frames, mean"): {s: pooled_frames(splits[s], "vision", False) for s in SPLITS},
        ("vision", "y_v", "frames, mean and max"): {s: pooled_frames(splits[s], "vision", True) for s in SPLITS},
    }
    rows, numbers, component_preds = [], {}, {}
    for (modality, component, read), x in feats.items():
        target = {s: np.asarray(latents[s][component], dtype=np.float64) for s in SPLITS}
        pred, penalty = ridge_fit_predict(x, target)
        if read.endswith("mean and max") or modality == "text":
            component_preds[modality] = pred
        score = r2(pred["test"], target["test"])
        # the label from this read-out alone: its component's prediction plus the training mean of the rest
        mae = float(np.mean(np.abs(pred["test"] + (label["train"] - target["train"]).mean() - label["test"])))
        share = float(np.var(target["test"]) / np.var(label["test"]))
        numbers[f"{modality}: {read}"] = {"r2": score, "mae": mae, "penalty": penalty, "share": share}
        rows.append([modality, read, component, f"{share:.2f}", f"{x['train'].shape[1]}", f"{penalty:g}",
                     f"{score:.2f}", f"{mae:.3f}"])
    for modalities in (("audio", "vision"), ("text", "audio"), ("text", "vision"), ("text", "audio", "vision")):
        # an additive model: the sum of the modalities' own read-outs (mean and max for audio and vision)
        names = " + ".join(modalities)
        rest = {s: label[s] - sum(np.asarray(latents[s][COMPONENT[m]], dtype=np.float64) for m in modalities)
                for s in SPLITS}
        pred = sum(component_preds[m]["test"] for m in modalities) + rest["train"].mean()
        target = label["test"] - rest["test"]
        mae = float(np.mean(np.abs(pred - label["test"])))
        numbers[names] = {"r2": r2(pred - rest["train"].mean(), target), "mae": mae}
        rows.append([names, "sum of their read-outs (audio, vision: mean and max)", " + ".join(COMPONENT[m] for m in modalities),
                     f"{float(np.var(target) / np.var(label['test'])):.2f}", "-", "-",
                     f"{numbers[names]['r2']:.2f}", f"{mae:.3f}"])
    oracle = np.asarray(latents["test"]["signal"], dtype=np.float64)
    floor = float(np.mean(np.abs(np.clip(oracle, label["test"].min(), label["test"].max()) - label["test"])))
    constant = float(np.mean(np.abs(label["train"].mean() - label["test"])))
    header = ["modalities", "read-out (pooled input)", "target", "target's share of var(y)", "features",
              "ridge penalty (valid)", "test R²", "test MAE of y from it alone"]
    table = common.markdown_table(header, rows)
    notes = [f"Predicting the training mean: test MAE {constant:.3f}; the planted signal y_t + y_a + y_v itself "
             f"(the best possible predictor): {floor:.3f}.",
             f"{len(label['train'])}/{len(label['valid'])}/{len(label['test'])} clips; ridge on standardised "
             "features with an intercept, its penalty (× the training size) chosen by validation MSE from "
             f"{', '.join(map(str, PENALTIES))}; R² on test against the component."]
    numbers["floor"] = {"mae": floor}
    numbers["constant"] = {"mae": constant}
    return table + "\n\n" + "\n".join(f"- {n}" for n in notes), numbers


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, float]]:
    import pickle
    from .campaign_plan import ENCODER, PLANTED_SEQ_LENS, PLANTED_SIZES, SMOKE_SIZES
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=common.DEFAULT_WORK_DIR / "planted-probe",
                        help="work folder for the planted pickle")
    parser.add_argument("--smoke", action="store_true", help="a tiny BERT and a few clips (tests)")
    parser.add_argument("--results-md", type=Path, default=None, help="RESULTS.md to update (default: "
                        "benchmarks/RESULTS.md; --smoke: <out>/RESULTS.md)")
    args = parser.parse_args(argv)
    common.setup_cli_logging()
    from khar_mmsa.model.text_encoders import local_folder, make_tiny_bert
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        encoder = args.out / "tiny-bert"
        if not (encoder / "config.json").is_file():
            make_tiny_bert(encoder, hidden_size=32)
        sizes, seq_lens = SMOKE_SIZES, None
    else:
        encoder, sizes, seq_lens = local_folder(ENCODER), PLANTED_SIZES, PLANTED_SEQ_LENS
    with Timer() as t:
        # the encoder by name, as the campaign builds it: the same bytes as its table3 data
        path, info = common.make_planted(args.out, "mosi", sizes, seq_lens, encoder if args.smoke else ENCODER)
        with open(path, "rb") as f:
            data = pickle.load(f)   # our own pickle, just written
        body, numbers = probe(data, encoder)
        body += (f"\n- Data: {path.name}, built by the campaign's call (its three splits' arrays have SHA-256 "
                 f"{splits_digest(data)[:12]}; the file differs from the campaign's only by the path it records).")
    logger.info("\n" + body)
    results_md = args.results_md or (args.out / "RESULTS.md" if args.smoke else common.RESULTS_MD)
    name = "planted-probe" + ("-smoke" if args.smoke else "")
    common.update_results_md(results_md, name, common.section(
        "Planted data: what a linear read-out of pooled inputs recovers (Table 3's data)",
        "python -m benchmarks.planted_probe" + (" --smoke" if args.smoke else ""),
        common.machine_line(), [info.seed], common.planted_description(info), t.seconds, body))
    logger.info(f"{name} -> {results_md} ({common.fmt_seconds(t.seconds)})")
    return numbers


if __name__ == "__main__":
    main()
