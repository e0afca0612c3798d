"""Small checkpoints shipped with robgen (safetensors weights + JSON metadata, one model card each)."""
