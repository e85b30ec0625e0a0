"""facecluster: face crops in, one cluster id per person out."""

__version__ = "0.1.0"
