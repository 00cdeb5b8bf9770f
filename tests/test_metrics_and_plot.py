"""pdl.metrics and pdl.plot."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from pdl.metrics import accuracy, classification_metrics, confusion_matrix
from pdl.plot import LivePlot, compare_histories, plot_confusion_matrix, plot_history, show_images


def test_multiclass_metrics_match_hand_computation():
    # 3 classes; class 2 is never predicted.
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 1, 0])
    scores = torch.nn.functional.one_hot(predicted, 3).float()
    values = {k: v.item() for k, v in classification_metrics(3)(scores, targets).items()}
    # precision per class: 1/2, 2/4, 0 -> macro 1/3; recall: 1/2, 2/2, 0/2 -> macro 1/2
    assert values["accuracy"] == pytest.approx(3 / 6)
    assert values["precision"] == pytest.approx((1 / 2 + 2 / 4 + 0) / 3)
    assert values["recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    f1 = [2 * p * r / (p + r) if p + r else 0 for p, r in [(1 / 2, 1 / 2), (2 / 4, 1), (0, 0)]]
    assert values["f1"] == pytest.approx(sum(f1) / 3)


def test_binary_metrics_take_single_logits():
    logits = torch.tensor([2.0, -1.0, 0.5, -3.0])
    targets = torch.tensor([1, 0, 0, 0])
    values = classification_metrics(2, task="binary")(logits, targets)
    assert values["accuracy"].item() == pytest.approx(0.75)
    assert values["precision"].item() == pytest.approx(0.5)
    assert accuracy(logits.unsqueeze(1), targets) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        classification_metrics(1)
    with pytest.raises(ValueError, match="task must be"):
        classification_metrics(3, task="multilabel")


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(
        torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]), torch.tensor([0, 1, 1]), 2
    )
    assert matrix.tolist() == [[1, 0], [1, 1]]


def test_plot_history_log_scale_and_both_splits():
    ax = plot_history(
        {"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.2, 0.9]}, label="mlp"
    )
    assert ax.get_yscale() == "log"
    assert [line.get_label() for line in ax.get_lines()] == ["mlp train", "mlp val"]
    assert plot_history({"train_accuracy": [0.5, 0.7]}, metric="accuracy").get_yscale() == "linear"
    with pytest.raises(KeyError, match="no train_f1 or val_f1"):
        plot_history({"train_loss": [1.0]}, metric="f1")
    plt.close("all")


def test_compare_histories_one_line_per_run():
    ax = compare_histories({"a": {"val_loss": [1, 0.5]}, "b": {"val_loss": [1, 0.7]}})
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    with pytest.raises(KeyError, match="run 'c' has no column 'val_loss'"):
        compare_histories({"c": {"train_loss": [1]}})
    plt.close("all")


def test_show_images_marks_wrong_predictions_and_denormalizes():
    images = torch.zeros(3, 3, 8, 8)  # normalized zeros = the mean colour
    fig = show_images(
        images,
        [0, 1, 1],
        predictions=[0, 0, 1],
        class_names=["ant", "bee"],
        mean=[0.5, 0.4, 0.3],
        std=[0.2, 0.2, 0.2],
    )
    titles = [(ax.get_title(), ax.title.get_color()) for ax in fig.axes]
    assert titles == [("ant", "black"), ("ant\n(true: bee)", "red"), ("bee", "black")]
    shown = fig.axes[0].get_images()[0].get_array()
    assert shown[0, 0].tolist() == pytest.approx([0.5, 0.4, 0.3])
    plt.close("all")


def test_confusion_matrix_plot_counts_and_normalized():
    ax = plot_confusion_matrix(torch.tensor([[5, 1], [2, 6]]), ["ant", "bee"])
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "5", "6"]
    ax = plot_confusion_matrix(torch.tensor([[3, 1], [0, 4]]), normalize=True)
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.25", "0.75", "1.00"]
    plt.close("all")


def test_live_plot_draws_nothing_outside_notebooks():
    live = LivePlot()
    before = plt.get_fignums()
    live.update({"epoch": [1], "train_loss": [1.0]})
    assert plt.get_fignums() == before
    assert live._display is None


def test_live_plot_redraws_the_whole_history_in_one_display(monkeypatch):
    import IPython
    import IPython.display

    shown = []

    class Handle:
        def update(self, fig):
            shown.append(fig)

    def display(fig, display_id):
        assert display_id is True
        shown.append(fig)
        return Handle()

    monkeypatch.setattr(IPython, "get_ipython", lambda: object())  # pretend to be a notebook
    monkeypatch.setattr(IPython.display, "display", display)
    live = LivePlot()
    live.update({"epoch": [1], "train_loss": [1.0], "val_loss": [1.2]})
    live.update({"epoch": [1, 2], "train_loss": [1.0, 0.5], "val_loss": [1.2, 0.8]})
    assert len(shown) == 2
    train, val = shown[-1].axes[0].get_lines()
    assert list(train.get_xdata()) == [1, 2] and list(val.get_ydata()) == [1.2, 0.8]
