"""ntire: EDSR/MDSR single-image super-resolution for the NTIRE challenge."""

__version__ = "0.1.0"
