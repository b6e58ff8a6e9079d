"""Command-line tools: weight import, model summary, benchmarks."""
