"""Launch scripts: one GPU host, a multi-GPU host and a Cloud TPU VM pod slice."""
