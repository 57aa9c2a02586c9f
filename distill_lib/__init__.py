"""distill_lib: dataset distillation by distribution matching (DM, and IDM with method="idm"), with class
centralization (CC) and covariance matching (CM) from "Exploiting Inter-sample and Inter-feature Relations in
Dataset Distillation" (CVPR 2024).

The main entry points, each in a module with one job:
``load_dataset`` (data), ``get_model`` (models), ``DistillConfig`` (distill), ``distill`` (runner), ``RunOptions``
(options), ``EvalProtocol``/``evaluate``/``random_subset`` (evaluate), ``SyntheticSet`` (synthetic).

Importing the package raises glibc's allocator thresholds for this process (``allocator``: large activation buffers
stay in the heap instead of being page-faulted in every op); ``DISTILL_MALLOC_TUNING=0`` switches that off.
"""
from . import allocator

allocator.tune()

from .data import DATASETS, RealData, load_dataset
from .distill import DistillConfig
from .evaluate import EvalProtocol, EvalResult, evaluate, random_subset
from .models import MODEL_NAMES, get_model
from .options import RunOptions
from .runner import distill
from .synthetic import SyntheticSet

__all__ = ["DATASETS", "RealData", "load_dataset", "DistillConfig", "distill", "EvalProtocol", "EvalResult",
           "evaluate", "random_subset", "MODEL_NAMES", "get_model", "RunOptions", "SyntheticSet"]
