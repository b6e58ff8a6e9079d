"""Flax modules: dilated ResNet backbone, ROCK block, SSD head and the assembled detector."""
