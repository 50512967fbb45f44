"""plimonai: tissue segmentation of 3D Polarized Light Imaging sections, as a MONAI bundle."""

__version__ = "0.2.0"
