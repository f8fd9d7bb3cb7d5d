"""The dLLM family qpass quantizes: configs, the traceable Denoiser and checkpoint loaders."""
from .config import (NAMED_CONFIGS, ModelConfig, dream_7b, llada_8b, tiny_dream, tiny_llada,
                     tiny_llama, tiny_moe, tiny_sdar)
from .denoiser import Block, Denoiser, RMSNorm, init_weights
from .from_hf import from_hf, is_transformers_model
from .loading import build, load, load_checkpoint, on_meta, save_checkpoint, zoo_names
from .tokenizer import ByteTokenizer

__all__ = ["ModelConfig", "NAMED_CONFIGS", "Denoiser", "Block", "RMSNorm", "build", "load",
           "load_checkpoint", "save_checkpoint", "on_meta", "from_hf", "is_transformers_model", "zoo_names",
           "init_weights", "ByteTokenizer",
           "llada_8b", "dream_7b", "tiny_llada", "tiny_dream", "tiny_llama", "tiny_moe", "tiny_sdar"]
