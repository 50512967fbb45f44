from .sliding_window import FlipTTAPredictor, GlassSkipPredictor, PLISlidingWindowInferer

__all__ = ["FlipTTAPredictor", "GlassSkipPredictor", "PLISlidingWindowInferer"]
