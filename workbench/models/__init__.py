"""Models: the world tokenizer, the tiny HF VLM (and a second family), loading any local HF
VLM, LoRA adapters, and score models (reward, cost, critics)."""

from .vlm import TinyVLMSpec, VLMError, build_tiny_vlm, load_vlm, save_vlm

__all__ = ["TinyVLMSpec", "VLMError", "build_tiny_vlm", "load_vlm", "save_vlm"]
