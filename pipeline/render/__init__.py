"""`neuron-catalog render`: a catalog as an offline static site."""

from pipeline.render.site import RenderSummary, render_site

__all__ = ["RenderSummary", "render_site"]
