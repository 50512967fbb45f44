from .backends import load_backend
from .fusion import fuse_conv_bn
from .unet import ConvBlock, DecoderBlock, EncoderBlock, PLIUNet

__all__ = ["ConvBlock", "DecoderBlock", "EncoderBlock", "PLIUNet", "fuse_conv_bn", "load_backend"]
