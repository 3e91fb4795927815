"""The lab beside dbprompt: the synthetic world, the proxy backbone's pre-training, the method
comparison with its baselines (full fine-tuning, LoRA, projection-only), sweeps as data, and the
benchmarks. It depends on dbprompt; dbprompt never imports it."""
