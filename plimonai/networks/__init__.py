from .unet import ConvBlock, DecoderBlock, EncoderBlock, PLIUNet

__all__ = ["ConvBlock", "DecoderBlock", "EncoderBlock", "PLIUNet"]
