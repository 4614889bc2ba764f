"""The model card written next to every exported model (markdown, for people)."""

from __future__ import annotations

from typing import Any

from transferkit.data.elpv import LICENSE_NOTE


def _verification(metadata: dict[str, Any], check: dict[str, Any]) -> str:
    """What the export checked: a logit tolerance (fp32/fp16) or the accuracy drop (int8)."""
    agreement = f"argmax agreement {check['argmax_agreement']:.4f}"
    accuracies = f"accuracy {check['onnx_accuracy']:.4f} (ONNX) vs {check['torch_accuracy']:.4f} (PyTorch)"
    if "accuracy_drop" not in check:
        return (
            f"ONNX Runtime ({metadata['precision']} weights and compute) vs fp32 PyTorch on the test images:\n"
            f"max |logit diff| {check['max_abs_diff']:.2e} (tolerance {check['tolerance']:.0e}),\n{agreement},\n"
            f"{accuracies}."
        )
    quantization = metadata["quantization"]
    return (
        f"int8 static quantization ({quantization['format'].upper()}, "
        f"{'per-channel' if quantization['per_channel'] else 'per-tensor'} int8 weights, uint8 activations), "
        f"calibrated with {quantization['calibration_method']} on {quantization['calibration_images']} images "
        f"of the {quantization['calibration_split']} split (never the test split).\n"
        f"Against fp32 PyTorch on the test images: {accuracies}, a drop of "
        f"{check['accuracy_drop'] * 100:.2f} points (limit {check['max_accuracy_drop'] * 100:.2f}); macro-F1 drop "
        f"{check['macro_f1_drop'] * 100:.2f} points; {agreement}; max probability difference "
        f"{check['max_probability_diff']:.3f}."
    )


def _calibration(metadata: dict[str, Any], metrics: dict[str, Any], reliability_png: str) -> str:
    calibration = metadata["calibration"]
    if calibration["method"] == "none":
        how = "Not calibrated (`train.calibration: none`): outputs are the network's raw logits and their softmax."
    else:
        how = (
            f"Temperature scaling, fitted on the validation split (never the test split): T = "
            f"{calibration['temperature']:.3f}, validation NLL {calibration['val_nll_before']:.4f} -> "
            f"{calibration['val_nll_after']:.4f}. Both outputs are temperature-scaled: `logits` are the raw "
            "logits divided by T and `probabilities` their softmax (argmax is unchanged)."
        )
    return (
        f"{how}\nExpected calibration error on the test split: {metrics['ece_uncalibrated']:.4f} raw, "
        f"{metrics['ece']:.4f} as exported.\n\n![reliability diagram]({reliability_png})"
    )


def _per_1000(figure: dict[str, Any]) -> str:
    """ "39 (95 % interval 17-75)" for a rate of 0.039 [0.017, 0.075]."""
    if figure["value"] is None:
        return "n/a (none in the test split)"
    return f"{figure['value'] * 1000:.0f} (95 % interval {figure['low'] * 1000:.0f}-{figure['high'] * 1000:.0f})"


def _percent(figure: dict[str, Any]) -> str:
    if figure["value"] is None:
        return "n/a"
    return f"{figure['value']:.1%} ({figure['low']:.1%}-{figure['high']:.1%})"


def _decision(metadata: dict[str, Any], metrics: dict[str, Any], gallery_png: str | None) -> str:
    """The operating point in words, with its intervals: what a production line will see."""
    decision = metrics.get("decision")
    if decision is None:
        return "No decision rule: act on `probabilities` (evaluated before the operating point existed)."
    rule, test = decision["rule"], decision["test"]
    lower, upper = rule["review_band"]
    names = "/".join(rule["names"])
    how = f"The `decision` output gives {names} per image, chosen on the validation split and measured on test. "
    if rule["positive_classes"]:
        positive = " or ".join(rule["positive_classes"])
        others = [n for n in metadata["class_names"] if n not in rule["positive_classes"]]
        negative = " or ".join(others)
        words = (
            f"{how}The score is the calibrated probability of {positive}. At the operating point alone "
            f"(flag at score >= {rule['threshold']:.3f}), of 1,000 {positive} cells about "
            f"{_per_1000(_complement(test['recall']))} pass unflagged, and about "
            f"{_per_1000(test['false_alarm'])} of 1,000 {negative} cells are flagged.\n"
            f"With the review band (pass below {lower:.3f}, flag at or above {upper:.3f}, a person looks in between) "
            f"{_percent(test['review'])} of cells go to review; the model decides the rest at "
            f"{_percent(test['auto_accuracy'])} accuracy, and then about {_per_1000(test['missed'])} of 1,000 "
            f"{positive} cells pass unflagged and {_per_1000(test['false_flags'])} of 1,000 {negative} cells are "
            "flagged automatically."
        )
    else:
        words = (
            f"{how}The predicted class is acted on when its probability is at least {lower:.3f}: "
            f"{_percent(test['review'])} of cells go to review, and the rest are decided at "
            f"{_percent(test['auto_accuracy'])} accuracy."
        )
    target = decision["target"]
    met = decision["threshold_met_on_val"] and decision["band_met_on_val"]
    words += f"\nTargets (params `decision.*`): {', '.join(f'{k} {v}' for k, v in target.items() if v is not None)}" + (
        "." if met else "; validation could not meet them, so the rule is the closest it could reach."
    )
    ood = metrics.get("ood")
    if ood is not None:
        words += (
            f"\n\nOut of distribution: `ood_score` is the {ood['score']}, fitted on the training split's "
            f"embeddings. Above {ood['threshold']:.4g} (where {ood['in_distribution_rate']:.0%} of validation cells "
            "stay below it) the decision is review, whatever the probabilities say: "
            f"{ood['test_over_threshold']:.1%} of test cells are over it, which takes the review share from "
            f"{ood['test_review_without_ood']:.1%} to {ood['test_review']:.1%}."
        )
    if gallery_png is not None:
        words += (
            "\n\nThe worst wrong automatic decisions on the test split, with where the model looked:"
            f"\n\n![error gallery]({gallery_png})"
        )
    return words


def _complement(figure: dict[str, Any]) -> dict[str, Any]:
    """1 - a rate, its interval flipped: recall's interval as a miss rate's."""
    if figure["value"] is None:
        return figure
    return {"value": 1 - figure["value"], "low": 1 - figure["high"], "high": 1 - figure["low"]}


def render_model_card(
    metadata: dict[str, Any],
    metrics: dict[str, Any],
    parity: dict[str, Any],
    reliability_png: str,
    gallery_png: str | None = None,
) -> str:
    names = metadata["class_names"]
    per_class = "\n".join(
        f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |"
        for name, m in metrics["per_class"].items()
    )
    slices = "\n".join(
        f"| {group} | {s['accuracy']:.3f} | {s['macro_f1']:.3f} | {s['count']} |"
        for group, s in metrics["slices"].items()
    )
    data_note = LICENSE_NOTE if metadata["source"] == "elpv" else f"User data ({metadata['source']})."
    auc = "n/a" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.3f}"
    return f"""# Model card: {metadata["architecture"]} fine-tuned by transferkit

## Use
Image classification into {len(names)} classes: {", ".join(names)}.
Input `images`: uint8 RGB, NCHW, {metadata["image_size"]}x{metadata["image_size"]}, values 0-255, any batch
size; resize the image to that square with {metadata["resize"]} resampling (grayscale images are
converted to RGB). Scaling and normalisation happen inside the graph.
Outputs: `logits` and `probabilities` (softmax), shape (batch, {len(names)}), in the class order above;
both temperature-scaled (see Calibration). Optional outputs, present in this model:
{", ".join(f"`{name}`" for name in metadata["outputs"][2:]) or "none"} (`decision`: see Decision;
`heatmap`: class activation maps over the last feature map that sum to `logits`; `embedding`: the
pooled features the head sees; `ood_score`: their distance from the training split, see Decision).
Everything here is also in the model's `metadata_props` (keys `transferkit.*`).

## Training
- Backbone: {metadata["architecture"]} with {metadata["weights"]} weights; strategy `{metadata["strategy"]}`;
  augmentation preset `{metadata["augment_preset"]}`.
- Exported precision: {metadata["precision"]} (input uint8, outputs {metadata["output_dtype"]}).
- Params hash `{metadata["params_hash"]}`, data hash `{metadata["data_hash"]}`.
- Data: {data_note}

## Test results ({metrics["count"]} held-out images, never used for model selection)
| metric | value |
|---|---|
| accuracy | {metrics["accuracy"]:.4f} |
| macro-F1 | {metrics["macro_f1"]:.4f} |
| balanced accuracy | {metrics["balanced_accuracy"]:.4f} |
| ROC-AUC | {auc} |
| expected calibration error (calibrated / raw) | {metrics["ece"]:.4f} / {metrics["ece_uncalibrated"]:.4f} |
| largest slice accuracy gap | {metrics["slice_gap"]:.4f} |

| class | precision | recall | F1 | support |
|---|---|---|---|---|
{per_class}

| slice | accuracy | macro-F1 | count |
|---|---|---|---|
{slices}

## Decision
{_decision(metadata, metrics, gallery_png)}

## Calibration
{_calibration(metadata, metrics, reliability_png)}

## Verification
{_verification(metadata, parity)}

## Limits
Trained on one dataset's distribution; images from other cameras, resolutions or cell types
need their own evaluation. Probabilities are only as calibrated as the ECE above says, and only
on data like the validation split they were calibrated on.
"""
