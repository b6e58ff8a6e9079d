"""TFDS builders reading the datasets' original files (nothing downloads at run time)."""
