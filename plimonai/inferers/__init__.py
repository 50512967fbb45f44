from .coarse_to_fine import CoarsePrediction
from .sliding_window import FlipTTAPredictor, GlassSkipPredictor, PLISlidingWindowInferer
from .streaming import BlendSweep, StreamingSliceInferer, StreamSelector, window_starts

__all__ = [
    "BlendSweep",
    "CoarsePrediction",
    "FlipTTAPredictor",
    "GlassSkipPredictor",
    "PLISlidingWindowInferer",
    "StreamSelector",
    "StreamingSliceInferer",
    "window_starts",
]
