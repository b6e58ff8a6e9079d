"""Test setup: 4 simulated CPU devices, quiet TensorFlow, no GPU for TensorFlow."""

import os

os.environ.setdefault('JAX_NUM_CPU_DEVICES', '4')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
