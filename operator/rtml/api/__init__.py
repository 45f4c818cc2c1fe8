"""The typed API of rtml: the one source of truth for the CRDs and the runtime's config."""

from rtml.api.experiment import Experiment, ExperimentSpec
from rtml.api.featureview import FeatureView, FeatureViewSpec
from rtml.api.model import Model, ModelSpec

__all__ = ["Experiment", "ExperimentSpec", "FeatureView", "FeatureViewSpec", "Model", "ModelSpec"]
