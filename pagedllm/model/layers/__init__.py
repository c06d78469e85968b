"""Building blocks of the decoder. Each is a small ``nn.Module`` that a later transform
(tensor-parallel split, quantized linear) can replace without touching the model class."""
