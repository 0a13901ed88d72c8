"""edgekd.report.audit on predictions whose per-class figures are worked out by hand below."""

import numpy as np
import pytest

from edgekd.errors import BadInput
from edgekd.report import audit

# Sample:      0  1  2  3  4  5  6  7  8   9 (unlabeled)
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, -1])
TEACHER = np.array([0, 0, 0, 1, 1, 1, 1, 2, 0, 2])
STUDENT = np.array([0, 0, 1, 1, 1, 1, 0, 2, 2, 1])
# class 0 (samples 0-3): teacher 3/4, student 2/4, they agree on 0,1,3 -> 3/4
# class 1 (samples 4-6): teacher 3/3, student 2/3, agree on 4,5 -> 2/3
# class 2 (samples 7-8): teacher 1/2, student 2/2, agree on 7 -> 1/2
# disagreement over all ten samples: 2, 6, 8, 9 -> 0.4


def _by_class(result):
    return {row["class"]: row for row in result["per_class"]}


def test_labeled_per_class_deltas_and_disagreement():
    result = audit(y_true=Y_TRUE, teacher_pred=TEACHER, student_pred=STUDENT, class_names=["zero", "one", "two"])
    rows = _by_class(result)
    assert result["labeled"] is True
    assert result["n_samples"] == 10 and result["n_labeled"] == 9
    assert result["disagreement_rate"] == pytest.approx(0.4)
    assert [rows[c]["support"] for c in (0, 1, 2)] == [4, 3, 2]
    assert [rows[c]["name"] for c in (0, 1, 2)] == ["zero", "one", "two"]
    assert rows[0]["teacher"] == pytest.approx(0.75) and rows[0]["student"] == pytest.approx(0.5)
    assert rows[0]["delta"] == pytest.approx(-0.25)
    assert rows[1]["teacher"] == pytest.approx(1.0) and rows[1]["delta"] == pytest.approx(-1 / 3)
    assert rows[2]["delta"] == pytest.approx(0.5)
    assert [rows[c]["agreement"] for c in (0, 1, 2)] == pytest.approx([0.75, 2 / 3, 0.5])
    assert result["teacher_accuracy"] == pytest.approx(7 / 9)
    assert result["student_accuracy"] == pytest.approx(6 / 9)
    assert result["fixed"] == 1 and result["broken"] == 2  # fixed: sample 8; broken: samples 2 and 6


def test_regressed_lists_only_negative_deltas_worst_first_capped_at_top():
    result = audit(y_true=Y_TRUE, teacher_pred=TEACHER, student_pred=STUDENT, top=3)
    assert [row["class"] for row in result["regressed"]] == [1, 0]  # class 2 improved: not listed
    assert [row["class"] for row in audit(y_true=Y_TRUE, teacher_pred=TEACHER, student_pred=STUDENT,
                                          top=1)["regressed"]] == [1]
    assert [row["class"] for row in result["least_agreement"]] == [2, 1, 0]


def test_without_labels_groups_by_teacher_prediction():
    result = audit(y_true=None, teacher_pred=TEACHER, student_pred=STUDENT)
    rows = _by_class(result)
    assert result["labeled"] is False and result["grouped_by"] == "teacher prediction"
    assert result["disagreement_rate"] == pytest.approx(0.4)
    # teacher says 0 at samples 0,1,2,8 (student 0,0,1,2); 1 at 3-6 (student 1,1,1,0); 2 at 7,9 (student 2,1)
    assert [rows[c]["support"] for c in (0, 1, 2)] == [4, 4, 2]
    assert [rows[c]["agreement"] for c in (0, 1, 2)] == pytest.approx([0.5, 0.75, 0.5])
    assert "teacher" not in rows[0] and result["regressed"] == []
    assert [row["class"] for row in result["least_agreement"]] == [0, 2, 1]


def test_all_unlabeled_samples_behave_like_no_labels():
    result = audit(y_true=np.full(10, -1), teacher_pred=TEACHER, student_pred=STUDENT)
    assert result["labeled"] is False and result["n_labeled"] == 0
    assert _by_class(result)[1]["agreement"] == pytest.approx(0.75)


def test_scores_are_arg_maxed():
    teacher_scores = np.eye(3)[TEACHER] * 5.0 - 1.0
    student_scores = np.eye(3)[STUDENT] * 2.0
    from_scores = audit(y_true=Y_TRUE, teacher_pred=teacher_scores, student_pred=student_scores)
    assert from_scores == audit(y_true=Y_TRUE, teacher_pred=TEACHER, student_pred=STUDENT)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"teacher_pred": TEACHER[:5], "student_pred": STUDENT}, "samples"),
    ({"teacher_pred": TEACHER, "student_pred": STUDENT, "y_true": Y_TRUE[:4]}, "y_true"),
    ({"teacher_pred": TEACHER, "student_pred": STUDENT, "class_names": ["a", "b"]}, "class index 2"),
    ({"teacher_pred": TEACHER + 0.5, "student_pred": STUDENT}, "teacher_pred"),
    ({"teacher_pred": np.zeros((2, 2, 2)), "student_pred": STUDENT}, "shape"),
    ({"teacher_pred": TEACHER, "student_pred": STUDENT, "top": -1}, "top"),
])
def test_bad_input_names_the_argument(kwargs, fragment):
    kwargs = {"y_true": Y_TRUE, **kwargs}
    with pytest.raises(BadInput, match=fragment):
        audit(**kwargs)
