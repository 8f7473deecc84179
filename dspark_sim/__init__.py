"""dspark-sim: predict, simulate and measure speculative decoding on your hardware and traffic."""

__version__ = "0.1.0"
