"""Integer-only (I-BERT) arithmetic and the integer BERT encoder reference model."""
