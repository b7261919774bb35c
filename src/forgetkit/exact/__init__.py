"""Exact unlearning by construction: sharded LoRA adapters, deletion retrains only the shards that held the data."""
