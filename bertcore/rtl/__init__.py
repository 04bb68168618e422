"""The RTL units of the encoder core (Amaranth 0.5): requantizer, GELU, softmax, LayerNorm,
systolic array, streams and their shared helpers."""
