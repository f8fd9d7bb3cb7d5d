"""Model configuration: one dataclass covers LLaDA-, Dream- and LLaMA-shaped denoisers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden: int
    vocab_size: int
    mask_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    qkv_bias: bool = False
    tie_embeddings: bool = False
    causal: bool = False          # False: bidirectional denoiser (LLaDA, Dream)
    logit_shift: bool = False     # Dream: position i-1 predicts token i
    max_seq_len: int = 4096
    family: str = "llada"         # naming used when saving: llada | dream | llama
    name: str = "custom"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..errors import CheckpointError
        self._check_fields(CheckpointError)
        if self.d_model % self.n_heads:
            raise CheckpointError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise CheckpointError(
                f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads} (GQA needs it)")

    def _check_fields(self, err) -> None:
        """Types and ranges, so a bad config.json is one clear error, not a crash later."""
        import math
        for f in ("d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_hidden", "vocab_size",
                  "max_seq_len"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise err(f"model config field {f} must be a positive integer, got {v!r}")
        for f in ("mask_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)
                                  or not 0 <= v < self.vocab_size):
                raise err(f"model config field {f} must be a token id in [0, {self.vocab_size}), "
                          f"got {v!r}")
        for f in ("rope_theta", "norm_eps"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v <= 0:
                raise err(f"model config field {f} must be a positive number, got {v!r}")
        for f in ("qkv_bias", "tie_embeddings", "causal", "logit_shift"):
            if not isinstance(getattr(self, f), bool):
                raise err(f"model config field {f} must be true or false, got "
                          f"{getattr(self, f)!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **kw) -> "ModelConfig":
        return dataclasses.replace(self, **kw)


def llada_8b() -> ModelConfig:
    return ModelConfig(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32, mlp_hidden=12288,
                       vocab_size=126464, mask_token_id=126336, eos_token_id=126081,
                       pad_token_id=126081, rope_theta=500000.0, norm_eps=1e-5,
                       family="llada", name="llada-8b")


def dream_7b() -> ModelConfig:
    return ModelConfig(d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, mlp_hidden=18944,
                       vocab_size=152064, mask_token_id=151666, eos_token_id=151643,
                       pad_token_id=151643, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                       logit_shift=True, family="dream", name="dream-7b")


# Tiny random-weight configs of each shape family, for tests.
def tiny_llada() -> ModelConfig:
    return ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden=192,
                       vocab_size=97, mask_token_id=96, eos_token_id=95, rope_theta=500000.0,
                       family="llada", name="tiny-llada-random")


def tiny_dream() -> ModelConfig:
    # Dream's real head layout scaled down: 28 heads / 4 KV heads, head dim 4, d = 112 = 4·28.
    return ModelConfig(d_model=112, n_layers=2, n_heads=28, n_kv_heads=4, mlp_hidden=224,
                       vocab_size=101, mask_token_id=100, eos_token_id=99, rope_theta=1e6,
                       norm_eps=1e-6, qkv_bias=True, logit_shift=True, family="dream",
                       name="tiny-dream-random")


def tiny_llama() -> ModelConfig:
    return ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128,
                       vocab_size=89, eos_token_id=88, rope_theta=10000.0, tie_embeddings=True,
                       causal=True, family="llama", name="tiny-llama-random")


NAMED_CONFIGS = {
    "llada-8b": llada_8b,
    "dream-7b": dream_7b,
    "tiny-llada-random": tiny_llada,
    "tiny-dream-random": tiny_dream,
    "tiny-llama-random": tiny_llama,
}
