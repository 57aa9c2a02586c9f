"""A live panel for the notebooks: sliders for CC's and CM's knobs, a run button, the t-SNE and metrics of the result.

The logic is plain Python, testable without a browser: :class:`Explorer` turns slider values into a distillation
config and computes a *view* of it (accuracy, class-discrimination metrics and a t-SNE map in the CC feature net's
embedding), and :func:`explore` draws a view into an ``ipywidgets.Output``. :class:`Panel` only wires sliders and a
button to them. Views are cached on disk under their full config (and the sets and accuracies under the sweep's
keys), so a setting that was run before, by the panel or by a notebook's sweep, is shown at once.
"""
from __future__ import annotations

import base64
import io
import math
import time
from dataclasses import asdict, dataclass, replace

import ipywidgets as widgets
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import seeding
from .analysis import discrimination_metrics, features_of, plot_tsne, real_features, tsne_2d
from .cache import DiskCache
from .distill import DistillConfig
from .evaluate import EvalProtocol, EvalResult
from .featnet import pretrain
from .sweep import Cell, cell_data, run_cell, synthetic_set

SLIDERS = ("beta", "alpha", "lambda_cc", "lambda_cm", "ipc", "iterations")
# (min, max, step) of each slider; alpha's slider is logarithmic: (min exponent, max exponent, step) of 10^x.
DEFAULT_RANGES = {"beta": (0.0, 8.0, 0.5), "alpha": (-4.0, 0.0, 0.25), "lambda_cc": (0.0, 1.0, 0.01),
                  "lambda_cm": (0.0, 0.1, 0.005), "ipc": (1, 20, 1), "iterations": (5, 100, 5)}


@dataclass(frozen=True)
class Explorer:
    """What the panel distils (``base``: data set, budget, feature net) and how it judges the result."""

    base: DistillConfig
    protocol: EvalProtocol
    real_per_class: int = 20  # real test images per class in the picture and as k-NN queries
    root: str | None = None  # data folder (None: $DISTILL_DATA)

    def config(self, values: dict) -> DistillConfig:
        """The config for slider ``values``: CC (paper form) on iff lambda_cc > 0, CM on iff lambda_cm > 0.

        A switched-off term keeps the base config's settings, so e.g. every beta gives the same DM config (one cache
        entry), as it should.
        """
        if set(values) != set(SLIDERS):
            raise ValueError(f"slider values must have exactly the keys {SLIDERS}, got {sorted(values)}")
        lambda_cc, lambda_cm = float(values["lambda_cc"]), float(values["lambda_cm"])
        if lambda_cc < 0 or lambda_cm < 0:
            raise ValueError(f"lambda_cc and lambda_cm must be >= 0 (0 switches the term off), got {lambda_cc}, "
                             f"{lambda_cm}")
        config = replace(self.base, ipc=int(values["ipc"]), iterations=int(values["iterations"]),
                         cc=lambda_cc > 0, cm=lambda_cm > 0)
        if lambda_cc > 0:
            config = replace(config, cc_form="paper", lambda_cc=lambda_cc, cc_alpha=float(values["alpha"]),
                             cc_beta=float(values["beta"]))
        if lambda_cm > 0:
            config = replace(config, lambda_cm=lambda_cm)
        return config

    def key(self, config: DistillConfig) -> dict:
        return {"config": asdict(config), "eval": asdict(self.protocol), "real_per_class": self.real_per_class}

    def cached(self, values: dict) -> dict | None:
        """The view of ``values`` if it was computed before, else None (computes nothing)."""
        return DiskCache("explorer").get(self.key(self.config(values)))

    def view(self, values: dict) -> tuple[dict, bool]:
        """(view, whether it came from the cache) for slider ``values``; computes and caches it when missing."""
        cache, key = DiskCache("explorer"), self.key(self.config(values))
        hit = cache.get(key)
        if hit is not None:
            return hit, True
        view = self._compute(self.config(values))
        cache.put(key, view)
        return view, False

    def _compute(self, config: DistillConfig) -> dict:
        start = time.perf_counter()
        cell = Cell(config, self.protocol)
        data = cell_data(cell, self.root)
        result = run_cell(cell, self.root, verbose=False)  # distils (or fetches) the set, then evaluates it
        net, _ = pretrain(data, config.featnet_spec())  # the same feature net for every setting of the panel
        syn_feats, syn_labels = features_of(synthetic_set(cell, self.root), net)
        real_feats, real_labels = real_features(data, net, self.real_per_class,
                                                seeding.generator(config.seed, seeding.ANALYSIS_REAL), split="test")
        metrics = discrimination_metrics(syn_feats, syn_labels, real_feats, real_labels)
        real_2d, syn_2d = tsne_2d([real_feats, syn_feats], seed=config.seed)
        return {"accuracies": list(result.accuracies), "metrics": metrics, "classes": list(data.classes),
                "real_2d": torch.from_numpy(real_2d), "real_labels": real_labels,
                "syn_2d": torch.from_numpy(syn_2d), "syn_labels": syn_labels,
                "seconds": time.perf_counter() - start}


def describe(config: DistillConfig) -> str:
    """A one-line name of a panel config, e.g. 'DM+CC(beta 2, alpha 0.01, lambda 0.1)+CM(lambda 0.01), IPC 10, 20 it'."""
    name = "DM"
    if config.cc:
        name += f"+CC(beta {config.cc_beta:g}, alpha {config.cc_alpha:.3g}, lambda {config.lambda_cc:g})"
    if config.cm:
        name += f"+CM(lambda {config.lambda_cm:g})"
    return f"{name}, IPC {config.ipc}, {config.iterations} it"


def figure(view: dict, title: str) -> Figure:
    """The t-SNE panel of a view, with its metrics under it and its accuracy in the title (no pyplot state)."""
    fig = Figure(figsize=(7.5, 5.6), layout="constrained")
    FigureCanvasAgg(fig)
    accuracy = EvalResult(tuple(view["accuracies"]))
    metrics = {k: round(v, 3) for k, v in view["metrics"].items() if not math.isnan(v)}
    plot_tsne(fig.add_subplot(), view["real_2d"].numpy(), view["real_labels"].numpy(), view["syn_2d"].numpy(),
              view["syn_labels"].numpy(), view["classes"], title=f"{title}\ntest accuracy {accuracy}",
              metrics=metrics)
    return fig


def explore(values: dict, output: widgets.Output, explorer: Explorer) -> dict:
    """The panel's callback: compute (or fetch) the view of ``values`` and draw it into ``output``.

    Replaces ``output``'s content with a text line (config, accuracy, metrics, where it came from) and the t-SNE
    picture as a PNG. Returns the view with ``cached`` (bool) and ``config`` added.
    """
    config = explorer.config(values)
    view, cached = explorer.view(values)
    fig = figure(view, describe(config))
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=90)
    origin = "from the cache" if cached else f"computed in {view['seconds']:.1f} s"
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in view["metrics"].items())
    text = f"{describe(config)}: accuracy {EvalResult(tuple(view['accuracies']))}; {metrics} ({origin})\n"
    output.outputs = (
        {"output_type": "stream", "name": "stdout", "text": text},
        {"output_type": "display_data", "metadata": {},
         "data": {"image/png": base64.b64encode(png.getvalue()).decode("ascii"), "text/plain": describe(config)}},
    )
    return {**view, "cached": cached, "config": config}


class Panel:
    """Sliders (``SLIDERS``), a Run button, a status line and an output area; ``panel.widget`` is what to display.

    Run (the button, or :meth:`run`) calls :func:`explore` with the slider values. Moving a slider to a setting that
    is cached shows it at once; otherwise the status asks for Run.
    """

    def __init__(self, explorer: Explorer, values: dict, ranges: dict | None = None):
        ranges = {**DEFAULT_RANGES, **(ranges or {})}
        explorer.config(values)  # fail early on bad values
        self.explorer = explorer
        self.sliders = {}
        for name in SLIDERS:
            low, high, step = ranges[name]
            common = dict(description=name, value=values[name], continuous_update=False,
                          style={"description_width": "80px"}, layout=widgets.Layout(width="340px"))
            if name == "alpha":
                self.sliders[name] = widgets.FloatLogSlider(base=10, min=low, max=high, step=step,
                                                            readout_format=".2e", **common)
            elif name in ("ipc", "iterations"):
                self.sliders[name] = widgets.IntSlider(min=low, max=high, step=step, **common)
            else:
                self.sliders[name] = widgets.FloatSlider(min=low, max=high, step=step, readout_format=".3g", **common)
            if not math.isclose(self.sliders[name].value, values[name], rel_tol=1e-9):  # a slider clamps silently
                shown = (10 ** low, 10 ** high) if name == "alpha" else (low, high)
                raise ValueError(f"{name}={values[name]} is outside its slider's range {shown}; pass ranges=...")
            self.sliders[name].observe(self._changed, names="value")
        self.button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.button.on_click(self._clicked)
        self.status = widgets.HTML("")
        self.output = widgets.Output()
        self.last: dict | None = None
        sliders = list(self.sliders.values())
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(sliders[:3]), widgets.VBox(sliders[3:])]),
                                    widgets.HBox([self.button, self.status]), self.output])

    def values(self) -> dict:
        return {name: slider.value for name, slider in self.sliders.items()}

    def run(self) -> dict:
        """Compute (or fetch) and draw the current setting; errors propagate (see the button for the UI path)."""
        self.status.value = "<b>running...</b>"
        self.button.disabled = True
        try:
            self.last = explore(self.values(), self.output, self.explorer)
        finally:
            self.button.disabled = False
        origin = "from the cache" if self.last["cached"] else f"computed in {self.last['seconds']:.1f} s"
        self.status.value = f"done: {origin}"
        return self.last

    def _clicked(self, _button) -> None:
        try:
            self.run()
        except Exception as err:  # shown where the student looks; a callback's traceback would go to the log
            self.status.value = f"<b>error:</b> {type(err).__name__}: {err}"

    def _changed(self, _change) -> None:
        try:
            hit = self.explorer.cached(self.values())
        except ValueError as err:
            self.status.value = f"<b>invalid setting:</b> {err}"
            return
        if hit is None:
            self.status.value = "changed: press Run to compute this setting"
        else:
            self.last = explore(self.values(), self.output, self.explorer)
            self.status.value = "done: from the cache"
