from .backends import CompiledNetwork, OnnxRuntimeNetwork, load_backend, resolve_backend
from .fusion import fuse_conv_bn
from .unet import ConvBlock, DecoderBlock, EncoderBlock, PLIUNet

__all__ = ["CompiledNetwork", "OnnxRuntimeNetwork", "resolve_backend", "ConvBlock", "DecoderBlock", "EncoderBlock", "PLIUNet", "fuse_conv_bn", "load_backend"]
