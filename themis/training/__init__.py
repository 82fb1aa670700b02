"""The train stage's machinery: the loss, LoRA, training data shards, metrics, the Ray Train worker, the loop."""
