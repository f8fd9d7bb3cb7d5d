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
    o_bias: bool = False          # LLaMA attention_bias: o_proj has a bias too
    mlp_bias: bool = False        # LLaMA mlp_bias: gate/up/down have biases
    explicit_head_dim: int | None = None   # HF head_dim when it is not d_model // n_heads
    rope_scaling: dict | None = None       # normalised rope type + parameters (qpass.models.rope)
    tie_embeddings: bool = False
    causal: bool = False          # False: bidirectional denoiser (LLaDA, Dream)
    logit_shift: bool = False     # Dream: position i-1 predicts token i
    max_seq_len: int = 4096
    family: str = "llada"         # naming used when saving: llada | dream | llama
    name: str = "custom"
    extra: dict = field(default_factory=dict)
    # Mixture of experts (LLaDA-MoE, LLaDA2): n_experts > 0 replaces the MLP of every block from
    # `first_dense_layers` on by a router + top-k experts (+ optional shared experts).
    n_experts: int = 0
    n_experts_per_tok: int = 0
    moe_hidden: int = 0            # each expert's MLP width
    n_shared_experts: int = 0      # always-on experts, one MLP of width n · moe_hidden
    norm_topk_prob: bool = True    # renormalise the top-k routing weights to sum to one
    first_dense_layers: int = 0
    router_sigmoid: bool = False   # LLaDA2: sigmoid scores (softmax otherwise)
    router_bias: bool = False      # LLaDA2: a per-expert bias on the scores used to choose
    router_fp32: bool = False      # router logits computed in fp32 whatever the model dtype
    n_expert_groups: int = 1       # group-limited routing: experts in groups, the best
    topk_groups: int = 1           #   topk_groups groups eligible
    routed_scaling_factor: float = 1.0
    # Block diffusion (SDAR): causal between blocks of this many positions, bidirectional inside.
    attn_block_size: int = 0
    qk_norm: bool = False          # RMSNorm on each head's q and k before RoPE (Qwen3, SDAR)

    def __post_init__(self) -> None:
        # Types, limits, consistency and the allocation estimate, before anything is built
        # (qpass.models.config_limits); integral floats of size fields become ints.
        from .config_limits import check_config
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for k, v in check_config(fields).items():
            if v is not fields[k]:
                setattr(self, k, v)

    def is_moe_layer(self, i: int) -> bool:
        return self.n_experts > 0 and i >= self.first_dense_layers

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "model config",
                  names: dict | None = None) -> "ModelConfig":
        """A config from a dict (a manifest's, or a reader's); keys it does not know are
        ignored. Every problem is one ConfigError naming `where` (the source) and the field,
        as the source calls it (`names`: field -> the source's key)."""
        from ..errors import ConfigError
        from .config_limits import check_config
        if not isinstance(d, dict):
            raise ConfigError(f"{where} must be a JSON object, not {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        missing = [n for n, f in fields.items() if n not in d and
                   f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where} lacks the field(s) {', '.join(missing)}")
        kw = {k: v for k, v in d.items() if k in fields}
        full = {n: kw[n] if n in kw else getattr(cls, n, None) for n in fields}
        full["extra"] = kw.get("extra", {})
        return cls(**check_config(full, where, names))

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


# Structure-only configs of the wider dLLM families (random weights; use device="meta" to
# inspect them). Sizes follow the published configs; special token ids left out (None) where
# they are not known here: a real checkpoint's config.json supplies them.
def llada_moe_7b() -> ModelConfig:
    """LLaDA-MoE-7B-A1B: 16 layers of 64 experts (8 active), no shared expert, qk norms."""
    return ModelConfig(d_model=2048, n_layers=16, n_heads=16, n_kv_heads=16, mlp_hidden=8192,
                       vocab_size=157184, rope_theta=50000.0, n_experts=64, n_experts_per_tok=8, moe_hidden=1024,
                       norm_topk_prob=False, qk_norm=True, max_seq_len=8192, family="llada",
                       name="llada-moe-7b")


def llada2_mini() -> ModelConfig:
    """LLaDA2.0-mini (16B total, 1.4B active): a dense first layer, then 256 experts (8 active)
    and one shared expert per layer, GQA 16/4, qk norms; BailingMoE-V2 routing (sigmoid
    scores, expert bias, 8 groups of which 4 eligible, scaled weights, fp32 router); block
    diffusion with blocks of 32 (its generate builds that block-causal mask). Its RoPE turns
    half of each head (partial_rotary_factor 0.5), which this config does not model."""
    return ModelConfig(d_model=2048, n_layers=20, n_heads=16, n_kv_heads=4, mlp_hidden=5120,
                       vocab_size=157184, rope_theta=600000.0, n_experts=256, n_experts_per_tok=8, moe_hidden=512,
                       n_shared_experts=1, first_dense_layers=1, qk_norm=True,
                       router_sigmoid=True, router_bias=True, router_fp32=True,
                       n_expert_groups=8, topk_groups=4, routed_scaling_factor=2.5,
                       attn_block_size=32, max_seq_len=8192, family="llada",
                       name="llada2-mini")


def sdar_8b() -> ModelConfig:
    """SDAR-8B (block diffusion on the Qwen3-8B layout): blocks of 4 positions, qk norms."""
    return ModelConfig(d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8, mlp_hidden=12288,
                       vocab_size=151936, eos_token_id=151645,
                       rope_theta=1e6, norm_eps=1e-6, qk_norm=True, attn_block_size=4,
                       max_seq_len=32768, family="llama", name="sdar-8b")


def diffucoder_7b() -> ModelConfig:
    """DiffuCoder-7B (Qwen2.5-Coder-7B layout, Dream's shifted logits)."""
    return ModelConfig(d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, mlp_hidden=18944,
                       vocab_size=152064, mask_token_id=151666, eos_token_id=151643,
                       pad_token_id=151643, rope_theta=1e6, norm_eps=1e-6, qkv_bias=True,
                       logit_shift=True, family="dream", name="diffucoder-7b")


def tiny_moe() -> ModelConfig:
    """Tiny random MoE for tests: 4 experts (2 active), a shared expert, a dense first layer."""
    return ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128,
                       vocab_size=97, mask_token_id=96, eos_token_id=95, rope_theta=10000.0,
                       n_experts=4, n_experts_per_tok=2, moe_hidden=32, n_shared_experts=1,
                       first_dense_layers=1, qk_norm=True, family="llada",
                       name="tiny-moe-random")


def tiny_sdar() -> ModelConfig:
    """Tiny random block-diffusion model for tests: blocks of 4 positions."""
    return ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=128,
                       vocab_size=97, mask_token_id=96, eos_token_id=95, rope_theta=10000.0,
                       qk_norm=True, attn_block_size=4, family="llama", name="tiny-sdar-random")


NAMED_CONFIGS = {
    "llada-8b": llada_8b,
    "dream-7b": dream_7b,
    "llada-moe-7b": llada_moe_7b,
    "llada2-mini": llada2_mini,
    "sdar-8b": sdar_8b,
    "diffucoder-7b": diffucoder_7b,
    "tiny-moe-random": tiny_moe,
    "tiny-sdar-random": tiny_sdar,
    "tiny-llada-random": tiny_llada,
    "tiny-dream-random": tiny_dream,
    "tiny-llama-random": tiny_llama,
}
