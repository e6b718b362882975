"""Evaluate an exported shipped model on fresh phantoms and write its card.

    .venv/bin/python -m models.evaluate fast_free_fluid

numpy and onnxruntime only (no PyTorch): the tests use `measure` to check that
a card's figures still hold on a set generated with another seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from models import datasets, metrics
from models.shipped import BUILD, CATALOG, RECIPES, Recipe
from server.inference import cards as c


@dataclass
class Figures:
    n: int
    n_positive: int
    auc: float
    auc_ci95: tuple[float, float]
    sensitivity: float
    specificity: float
    dice: float
    #: Standard deviation of the per-case Dice (for tolerances; not on the card).
    dice_sd: float
    peak_in_lesion: float


def predict(session: ort.InferenceSession, x: np.ndarray, batch: int = 64,
            ) -> tuple[np.ndarray, np.ndarray]:
    """Image probabilities [N] and maps [N, H, W] for inputs [N, C, H, W]."""
    probs, maps = [], []
    for i in range(0, len(x), batch):
        p, m = session.run(["probability", "probability_map"], {"image": x[i:i + batch]})
        probs.append(p)
        maps.append(m[:, 0])
    return np.concatenate(probs), np.concatenate(maps)


def measure(session: ort.InferenceSession, data: datasets.Batch, threshold: float) -> Figures:
    probs, maps = predict(session, data.x)
    auc, ci = metrics.auc_with_ci(probs, data.labels)
    sens, spec = metrics.sensitivity_specificity(probs, data.labels, threshold)
    dices = metrics.case_dice(maps, data.masks)
    return Figures(n=len(probs), n_positive=int(data.labels.sum()), auc=auc, auc_ci95=ci,
                   sensitivity=sens, specificity=spec,
                   dice=float(dices.mean()), dice_sd=float(dices.std(ddof=1)),
                   peak_in_lesion=metrics.peak_in_lesion(maps, data.masks))


def session_for(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_TEXT = {
    "fast_free_fluid": dict(
        task="segmentation", modality="US",
        description="Free fluid on a FAST-exam B-mode frame: a per-pixel probability of "
                    "anechoic free fluid and the frame's probability that any is present.",
        outputs=[("probability", [None], "probability that the frame shows free fluid"),
                 ("probability_map", [None, 1, 128, 128],
                  "per-pixel probability of free fluid, on the resized 128x128 frame")],
        gate=c.UltrasoundGate(min_size=(128, 128), min_fps=8.0, body_parts=["ABDOMEN"]),
        source="models/phantoms/ultrasound.py: synthetic convex-probe B-mode frames with "
               "speckle, organs, free-fluid crescents and pockets, and look-alikes "
               "(vessels, gallbladder, cysts, rib and gas shadows)",
        intended_use="Research and demonstration of the GoldenHour inference runtime and "
                     "overlays. Never for diagnosis, triage or any decision about a patient.",
        limitations=[
            "Trained and evaluated only on synthetic phantoms; its figures say nothing about "
            "real patients.",
            "Has never seen real anatomy, clotted blood, ascites, bladder or bowel fluid: it "
            "will call any dark region with the phantom's shape cues fluid.",
            "Reads greyscale B-mode only; colour Doppler frames are refused by the gate."]),
    "head_ct_ich": dict(
        task="detection", modality="CT",
        description="Acute intracranial hemorrhage on one axial head-CT slice: the slice's "
                    "probability of a bleed (intraparenchymal, subdural, epidural or "
                    "subarachnoid) and a localisation map.",
        outputs=[("probability", [None], "probability that the slice shows an acute bleed"),
                 ("probability_map", [None, 1, 128, 128],
                  "localisation: per-pixel probability of blood on the model's 1.875 mm grid")],
        gate=c.HeadCtGate(),
        source="models/phantoms/head_ct.py: synthetic axial slices in HU with skull, "
               "grey/white matter, ventricles, the four bleed types and look-alikes "
               "(calcifications, dense sinus, beam-hardening streaks, partial-volume bone)",
        intended_use="Research and demonstration of the GoldenHour inference runtime, gating "
                     "and overlays. Never for diagnosis, triage or thrombolysis decisions.",
        limitations=[
            "Trained and evaluated only on synthetic phantoms; its figures say nothing about "
            "real patients.",
            "Sees one slice at a time; no series context, no chronic/subacute blood.",
            "Real scans carry anatomy and artefacts the phantoms lack: it may call them blood. "
            "The gate refuses non-head and non-HU inputs, not every hard head slice."]),
}


def build_card(recipe: Recipe, threshold: float, figures: Figures, diff: float | None,
               ) -> c.ModelCard:
    text = _TEXT[recipe.name]
    path = CATALOG / f"{recipe.name}.onnx"
    pre = (datasets.FAST_PREPROCESSING if text["modality"] == "US"
           else datasets.HEAD_CT_PREPROCESSING)
    channels = len(pre.windows) if isinstance(pre, c.CtPreprocessing) else 1
    return c.ModelCard(
        schema_version=1, name=recipe.name, version=recipe.version, file=path.name,
        sha256=sha256(path), task=text["task"], modality=text["modality"],
        description=text["description"],
        input=c.TensorSpec(name="image", shape=[None, channels, *pre.size],
                           meaning="the preprocessed picture (see preprocessing)"),
        outputs=[c.TensorSpec(name=n, shape=s, meaning=m) for n, s, m in text["outputs"]],
        probability_output="probability", map_output="probability_map",
        preprocessing=pre, gate=text["gate"],
        threshold=c.Threshold(output="probability", value=round(threshold, 6),
                              operating_point=f"sensitivity >= {recipe.target_sensitivity} on "
                                              f"the validation set (seed "
                                              f"{recipe.validation_seed}, n="
                                              f"{recipe.n_validation})"),
        training_data=c.TrainingData(synthetic=True, source=text["source"], n=recipe.n_train,
                                     seed=recipe.train_seed),
        evaluation=c.Evaluation(
            dataset="synthetic held-out phantoms (models.datasets, another seed)",
            n=figures.n, n_positive=figures.n_positive, seed=recipe.test_seed,
            auc=round(figures.auc, 4), auc_ci95=tuple(round(v, 4) for v in figures.auc_ci95),
            sensitivity=round(figures.sensitivity, 4), specificity=round(figures.specificity, 4),
            threshold=round(threshold, 6), dice=round(figures.dice, 4),
            peak_in_lesion=round(figures.peak_in_lesion, 4),
            torch_onnx_max_abs_diff=diff,
            notes="AUC 95% CI by DeLong; Dice: mean per positive case, map >= 0.5, on the "
                  "model's grid; peak-in-lesion: share of positive cases whose map maximum "
                  "lies in the truth mask"),
        intended_use=text["intended_use"], not_for_clinical_use=True,
        limitations=text["limitations"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(RECIPES))
    args = parser.parse_args()
    recipe = RECIPES[args.name]
    path = CATALOG / f"{recipe.name}.onnx"
    session = session_for(path)
    validation = recipe.batch(recipe.validation_seed, recipe.n_validation)
    val_probs, _ = predict(session, validation.x)
    threshold = metrics.threshold_for_sensitivity(val_probs, validation.labels,
                                                  recipe.target_sensitivity)
    figures = measure(session, recipe.batch(recipe.test_seed, recipe.n_test), threshold)
    export_report = BUILD / f"{recipe.name}.export.json"
    diff = json.loads(export_report.read_text())["torch_onnx_max_abs_diff"] \
        if export_report.exists() else None
    card = build_card(recipe, threshold, figures, diff)
    out = CATALOG / f"{recipe.name}{c.CARD_SUFFIX}"
    out.write_bytes(c.encode_card(card))
    c.load_card(out)  # what we wrote must load
    print(json.dumps({"card": out.name, **figures.__dict__, "threshold": threshold}))


if __name__ == "__main__":
    main()
