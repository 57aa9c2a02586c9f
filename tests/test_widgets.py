"""Tests for distill_lib.widgets without a browser: slider values -> config, the callback drawing into an Output,
cache hits on repeated settings, and the panel's button and sliders."""
import base64
import math

import ipywidgets as widgets
import pytest
import torch

from distill_lib.distill import DistillConfig, Distiller
from distill_lib.evaluate import EvalProtocol
from distill_lib.widgets import SLIDERS, Explorer, Panel, explore

BASE = DistillConfig(dataset="digits", ipc=2, iterations=2, batch_real=8, net_width=8,
                     featnet_recipe="default", featnet_arch="convnet", featnet_epochs=1, featnet_per_class=20)
EXPLORER = Explorer(BASE, EvalProtocol(epochs=1, num_models=1, device="cpu"), real_per_class=3)
VALUES = {"beta": 2.0, "alpha": 0.01, "lambda_cc": 0.1, "lambda_cm": 0.01, "ipc": 2, "iterations": 2}


@pytest.fixture
def steps(monkeypatch, digits):
    """Counts distillation steps (every run of the panel distils through Distiller.step)."""
    count = [0]
    step = Distiller.step

    def counting(run):
        count[0] += 1
        return step(run)

    monkeypatch.setattr(Distiller, "step", counting)
    return count


def shown(output: widgets.Output) -> tuple[str, bytes]:
    """(text, png bytes) of an output filled by explore."""
    text, image = output.outputs
    return text["text"], base64.b64decode(image["data"]["image/png"])


def test_config_from_slider_values():
    config = EXPLORER.config(VALUES)
    assert config.cc and config.cm and config.cc_form == "paper"
    assert (config.cc_beta, config.cc_alpha, config.lambda_cc, config.lambda_cm) == (2.0, 0.01, 0.1, 0.01)
    dm = [EXPLORER.config({**VALUES, "lambda_cc": 0, "lambda_cm": 0, "beta": b, "alpha": a})
          for b, a in ((2.0, 0.01), (5.0, 0.3))]
    assert dm[0] == dm[1] == BASE  # switched-off terms keep the base settings: one DM config, one cache entry
    with pytest.raises(ValueError, match="exactly the keys"):
        EXPLORER.config({k: v for k, v in VALUES.items() if k != "alpha"})
    with pytest.raises(ValueError, match="lambda_cc and lambda_cm must be >= 0"):
        EXPLORER.config({**VALUES, "lambda_cm": -0.1})


def test_callback_draws_and_second_call_hits_the_cache(steps):
    output = widgets.Output()
    first = explore(VALUES, output, EXPLORER)
    text, png = shown(output)
    assert png.startswith(b"\x89PNG") and "computed in" in text and "accuracy" in text
    assert not first["cached"] and steps[0] == 2
    assert 0 <= first["metrics"]["knn_accuracy"] <= 1 and 0 <= first["accuracies"][0] <= 1
    assert first["real_2d"].shape == (3 * 10, 2) and first["syn_2d"].shape == (2 * 10, 2)

    again = explore(VALUES, output, EXPLORER)
    assert again["cached"] and steps[0] == 2  # nothing distilled again
    text_again, png_again = shown(output)
    assert "from the cache" in text_again and png_again == png
    assert torch.equal(again["syn_2d"], first["syn_2d"]) and again["metrics"] == first["metrics"]


def test_ipc_one_view_has_no_silhouette(steps):
    output = widgets.Output()
    with pytest.warns(UserWarning, match="ipc=1"):
        view = explore({**VALUES, "ipc": 1}, output, EXPLORER)
    assert math.isnan(view["metrics"]["silhouette"]) and shown(output)[1].startswith(b"\x89PNG")


def test_panel_button_and_sliders(steps):
    with pytest.raises(ValueError, match="iterations=2 is outside its slider's range"):
        Panel(EXPLORER, VALUES)  # the default iterations slider starts at 5
    panel = Panel(EXPLORER, VALUES, ranges={"alpha": (-3.0, 0.0, 0.5), "iterations": (1, 10, 1)})
    assert list(panel.sliders) == list(SLIDERS) and panel.values() == VALUES
    assert panel.sliders["alpha"].min == -3.0
    panel.button.click()
    assert panel.status.value.startswith("done: computed") and panel.output.outputs and steps[0] == 2
    first_png = shown(panel.output)[1]

    panel.sliders["beta"].value = 3.0  # not computed yet: the old picture stays, the status asks for Run
    assert "press Run" in panel.status.value and shown(panel.output)[1] == first_png and steps[0] == 2
    panel.button.click()
    assert steps[0] == 4 and shown(panel.output)[1] != first_png

    panel.sliders["beta"].value = 2.0  # back to a cached setting: shown at once, nothing computed
    assert panel.status.value == "done: from the cache" and shown(panel.output)[1] == first_png and steps[0] == 4


def test_panel_button_shows_errors_instead_of_raising(monkeypatch):
    panel = Panel(EXPLORER, VALUES, ranges={"iterations": (1, 10, 1)})

    def fail(values, output, explorer):
        raise RuntimeError("boom")

    monkeypatch.setattr("distill_lib.widgets.explore", fail)
    panel.button.click()
    assert "RuntimeError: boom" in panel.status.value and not panel.button.disabled
    with pytest.raises(RuntimeError, match="boom"):
        panel.run()
