"""Pure renderers: a Model (+ facts about the cluster) -> the exact objects the operator applies."""

from rtml.operator.render.context import RenderContext
from rtml.operator.render.model import render_model_children

__all__ = ["RenderContext", "render_model_children"]
