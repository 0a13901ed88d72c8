"""Does the model still work? The parity gate compares runtimes with PyTorch, so a model broken in
PyTorch itself passes it: measured on a real QAT checkpoint, weight scales x1e6, negated scales or
zeroed weights exported with "top-1 1.0000, cosine 1.000000" while accuracy fell from 0.99 to
~0.08, one class predicted for every input. These checks look at the PyTorch reference outputs
on the held-out parity inputs and fail the gate when the model has collapsed.
"""

from __future__ import annotations

import numpy as np

# Fail when held-out accuracy falls below this share of the accuracy the checkpoint recorded: far
# outside any quantization or runtime loss (the gate's own parity bar is 0.99 top-1 agreement),
# well inside the collapse measured above (0.08 of 0.99).
MIN_RETENTION_OF_RECORDED = 0.5
# Outputs that differ by less than this (relative to their scale) for every input are "constant".
CONSTANT_TOLERANCE = 1e-6
# Without a recorded metric the labels alone judge: a classifier of k >= 3 classes that predicts fewer
# than a third of them, or scores under twice chance (1/k), does not work. Trained digits models
# score 0.98+ and predict all 10 classes; the tampered checkpoints seen scored 0.08-0.18 on 1-2 classes.
MIN_PREDICTED_SHARE = 1 / 3
CHANCE_MULTIPLE = 2.0


def task_check(reference: np.ndarray, inputs: tuple[np.ndarray, ...], *, task: str,
               labels: np.ndarray | None = None, recorded_accuracy: float | None = None) -> tuple[dict, list[str]]:
    """(figures for the gate's evidence, problems that fail it) for the model's first output on `inputs`."""
    outputs = reference.reshape(len(reference), -1).astype(np.float64)
    figures: dict = {"samples": int(len(outputs))}
    problems: list[str] = []
    inputs_differ = any(len(a) >= 2 and bool((a != a[:1]).any()) for a in inputs)
    if inputs_differ:
        spread = float(np.abs(outputs - outputs[0]).max())
        figures["output_spread"] = spread
        if not np.isfinite(outputs).all():
            problems.append("the PyTorch model itself outputs inf or NaN on the held-out inputs")
        elif spread <= CONSTANT_TOLERANCE * (1.0 + float(np.abs(outputs[0]).max())):
            problems.append(f"the model has collapsed: all {len(outputs)} held-out inputs give the same output")
    if task != "classification" or labels is None or problems:
        return figures, problems
    labeled = labels >= 0
    if labeled.sum() < 2:
        return figures, problems
    predicted = outputs.argmax(axis=1)
    classes = np.unique(labels[labeled])
    accuracy = float((predicted[labeled] == labels[labeled]).mean())
    figures.update(accuracy=accuracy, predicted_classes=int(len(np.unique(predicted))), label_classes=int(len(classes)))
    if len(classes) >= 2 and figures["predicted_classes"] == 1:
        problems.append(f"the model has collapsed: it predicts class {int(predicted[0])} for all {len(predicted)} "
                        f"held-out inputs (the labels have {len(classes)} classes; accuracy {accuracy:.4f})")
    elif len(classes) >= 3 and figures["predicted_classes"] < MIN_PREDICTED_SHARE * len(classes):
        problems.append(f"the model has collapsed: it predicts only {figures['predicted_classes']} of the "
                        f"{len(classes)} classes on {len(predicted)} held-out inputs (accuracy {accuracy:.4f})")
    elif recorded_accuracy is not None and accuracy < MIN_RETENTION_OF_RECORDED * recorded_accuracy:
        problems.append(f"held-out accuracy {accuracy:.4f} is far below the {recorded_accuracy:.4f} the checkpoint "
                        f"recorded (under {MIN_RETENTION_OF_RECORDED:.0%} of it): the model no longer works")
    elif len(classes) >= 3 and accuracy < CHANCE_MULTIPLE / len(classes):
        problems.append(f"held-out accuracy {accuracy:.4f} is no better than chance over {len(classes)} classes: "
                        "the model does not work")
    if recorded_accuracy is not None:
        figures["recorded_accuracy"] = recorded_accuracy
    return figures, problems
