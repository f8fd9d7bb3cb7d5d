"""The tokenizer.* metadata of a GGUF file, as llama.cpp's converter (convert_hf_to_gguf.py) and
tools read it: the vocabulary, merges, pre-tokenizer name, special ids, add-BOS/EOS flags and
the chat template (docs/INTEROP.md "Tokenizer metadata").

What llama.cpp needs, and how it is met here:
* `tokenizer.ggml.pre` names the regex llama.cpp splits text with before the merges. Its
  converter encodes one fixed check text with the HF tokenizer and looks the SHA-256 of the id
  list up in a table of known tokenizers. qpass does the same for the tokenizers of the families
  it exports (KNOWN_PRE), and otherwise reads the pre-tokenizer of the tokenizer.json itself and
  names the llama.cpp type that implements the same split (GPT-2's byte-level regex, SmolLM's
  digits + GPT-2, the Llama-3 and Qwen2 regexes); anything else stays `default`.
* No metadata array is empty (gguf-py's writer, and so gguf_new_metadata.py, refuses them), yet
  llama.cpp refuses a `gpt2` vocabulary without `tokenizer.ggml.merges`: a vocabulary without
  merges (the byte tokenizer, every byte one token) gets one merge of two control tokens, which
  can never apply (merges pair pieces of text; control tokens are never such pieces).
* `add_bos_token` / `add_eos_token` say what the HF tokenizer itself adds to `tok(text)`, so
  llama.cpp adds the same (no second BOS in front of a chat prompt that starts with it).
* `tokenizer.chat_template`: the tokenizer's own; for a tokenizer without one (qpass's byte
  tokenizer, base models) a template that emits the messages' contents as they are, so
  llama-diffusion-cli / llama-cli do not wrap a prompt in their ChatML fallback."""
from __future__ import annotations

import hashlib
import json

from qpass.errors import CheckpointError
from qpass.interop.gguf_file import ARRAY, BOOL, I32, STRING, U32, Value

# token types (gguf TokenType)
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5

# Messages as they are, one after the other (no roles, no generation prompt): a raw prompt.
PASS_THROUGH_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"

# The text llama.cpp's converter encodes to identify a BPE pre-tokenizer (get_vocab_base_pre):
# whitespace runs, emoji, digit runs, scripts, quotes and contractions.
CHECK_TEXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL")

# SHA-256 of str(tok.encode(CHECK_TEXT)) -> the name llama.cpp's converter writes, for the
# tokenizers of the families qpass exports (the hashes are llama.cpp's, per tokenizer)
KNOWN_PRE = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",   # SmolLM/2
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",   # Qwen2 (Dream)
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",   # Qwen3
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",   # GPT-2
}

# The split regexes of tokenizer.json files that llama.cpp implements as a pre-tokenizer type
_LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}"
              "\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2_RE = _LLAMA3_RE.replace("\\p{N}{1,3}", "\\p{N}")
_SPLIT_PRE = {_LLAMA3_RE: "llama-bpe", _QWEN2_RE: "qwen2"}


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table, which llama.cpp's BPE vocabulary
    ("gpt2" model) decodes tokens with."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merges(merges) -> list[str]:
    """BPE merges as GGUF strings "a b": tokenizer.json writes them as "a b" or ["a", "b"];
    anything else is a malformed tokenizer file (one error, not a TypeError later)."""
    ok = isinstance(merges, list) and all(
        isinstance(m, str) or (isinstance(m, list) and len(m) == 2 and
                               all(isinstance(x, str) for x in m)) for m in merges)
    if not ok:
        raise CheckpointError("the tokenizer's BPE merges are neither \"a b\" strings nor "
                              "[\"a\", \"b\"] pairs; the tokenizer.json is malformed")
    return [m if isinstance(m, str) else " ".join(m) for m in merges]


def _pre_of_json(pre) -> str | None:
    """The llama.cpp pre-tokenizer type doing what a tokenizer.json `pre_tokenizer` does."""
    if not isinstance(pre, dict):
        return None
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps):
        return None
    kinds = [s.get("type") for s in steps]
    last = steps[-1]
    if kinds[-1:] != ["ByteLevel"] or last.get("add_prefix_space"):
        return None
    if last.get("use_regex", True):                     # GPT-2's regex inside ByteLevel
        if kinds == ["ByteLevel"]:
            return "gpt-2"
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return "smollm"
        return None
    if kinds == ["Split", "ByteLevel"]:
        split = steps[0]
        regex = split.get("pattern", {}).get("Regex") if isinstance(split.get("pattern"), dict) \
            else None
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            return _SPLIT_PRE.get(regex)
    return None


def pre_tokenizer(tok, tokenizer_json: dict) -> str:
    """`tokenizer.ggml.pre` for an HF fast tokenizer: what llama.cpp's converter writes for a
    known tokenizer (KNOWN_PRE), else the type implementing its tokenizer.json split, else
    llama.cpp's `default`."""
    ids = tok.encode(CHECK_TEXT)
    known = KNOWN_PRE.get(hashlib.sha256(str(ids).encode()).hexdigest())
    return known or _pre_of_json(tokenizer_json.get("pre_tokenizer")) or "default"


def _adds(tok, token_id) -> tuple[bool, bool]:
    """(starts with, ends with) `token_id`: whether tok(text) adds it at either end."""
    if token_id is None:
        return False, False
    ids = list(tok("a")["input_ids"])
    bare = list(tok("a", add_special_tokens=False)["input_ids"])
    return (ids[:1] == [token_id] and bare[:1] != [token_id],
            ids[-1:] == [token_id] and bare[-1:] != [token_id])


def chat_templates(tok) -> dict[str, Value]:
    """tokenizer.chat_template (+ named ones, as gguf-py writes a dict of templates)."""
    t = getattr(tok, "chat_template", None)
    if isinstance(t, str) and t:
        return {"tokenizer.chat_template": Value(STRING, t)}
    if isinstance(t, dict) and t:
        md = {}
        names = [n for n, v in t.items() if isinstance(v, str) and v and n != "default"]
        if isinstance(t.get("default"), str) and t["default"]:
            md["tokenizer.chat_template"] = Value(STRING, t["default"])
        for n in names:
            md[f"tokenizer.chat_template.{n}"] = Value(STRING, t[n])
        if names:
            md["tokenizer.chat_templates"] = Value(ARRAY, names, STRING)
        if "tokenizer.chat_template" in md:
            return md
        return {**md, "tokenizer.chat_template": Value(STRING, PASS_THROUGH_TEMPLATE)}
    return {"tokenizer.chat_template": Value(STRING, PASS_THROUGH_TEMPLATE)}


def _byte_vocab(tok, vocab_size: int):
    b2u = _byte_to_unicode()
    tokens = [b2u[i] for i in range(256)] + [f"[PAD{i}]" for i in range(256, vocab_size)]
    types = [NORMAL] * 256 + [UNUSED] * (vocab_size - 256)
    for s, i in tok.specials.items():
        if not 256 <= i < vocab_size:
            raise CheckpointError(f"the byte tokenizer's special {s!r} has id {i}, outside "
                                  f"256..{vocab_size - 1} of the model's vocabulary; the "
                                  f"checkpoint's tokenizer does not fit its model")
        tokens[i], types[i] = s, CONTROL
    # no BOS: <eos> is named, else llama.cpp's BPE default (id 11, a byte) would stand for one
    special = {"bos": tok.eos_token_id, "eos": tok.eos_token_id, "padding": tok.pad_token_id}
    return tokens, types, [], "default", special, (False, False)


def _hf_vocab(tok, vocab_size: int):
    backend = getattr(tok, "backend_tokenizer", None)
    data = json.loads(backend.to_str()) if backend is not None else {}
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise CheckpointError(f"the checkpoint's tokenizer ({type(tok).__name__}, model "
                              f"{model.get('type')!r}) is not a BPE tokenizer.json; qpass "
                              f"writes GGUF vocabularies for BPE and byte tokenizers only")
    rev = {i: t for t, i in tok.get_vocab().items()}
    added = getattr(tok, "added_tokens_decoder", {})
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in rev:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:             # as llama.cpp's converter types added tokens
            t = rev[i]
            looks = t.startswith("<|") and t.endswith("|>")
            tokens.append(t)
            types.append(CONTROL if added[i].special or looks else USER_DEFINED)
        else:
            tokens.append(rev[i])
            types.append(NORMAL)
    special = {"bos": tok.bos_token_id, "eos": tok.eos_token_id, "unknown": tok.unk_token_id,
               "padding": tok.pad_token_id}
    adds = (_adds(tok, tok.bos_token_id)[0], _adds(tok, tok.eos_token_id)[1])
    return (tokens, types, _merges(model.get("merges", [])), pre_tokenizer(tok, data), special,
            adds)


def tokenizer_metadata(tok, vocab_size: int, family: str | None = None) -> dict[str, Value]:
    """tokenizer.* for qpass's byte tokenizer (bytes as GPT-2 byte characters, no merges,
    specials as control tokens) or an HF fast tokenizer with a BPE tokenizer.json; {} for
    None. `family` is unused (kept for callers; the pre-tokenizer is read from the tokenizer)."""
    if tok is None:
        return {}
    if hasattr(tok, "specials"):             # qpass ByteTokenizer
        tokens, types, merges, pre, special, (bos, eos) = _byte_vocab(tok, vocab_size)
    else:
        tokens, types, merges, pre, special, (bos, eos) = _hf_vocab(tok, vocab_size)
    if not merges:           # llama.cpp needs the key, gguf-py refuses an empty array
        ctl = [t for t, k in zip(tokens, types) if k == CONTROL and " " not in t][:2]
        if len(ctl) < 2:
            raise CheckpointError("the tokenizer has neither BPE merges nor two control tokens; "
                                  "llama.cpp's gpt2 vocabulary needs a merges list")
        merges = [" ".join(ctl)]
    md = {"tokenizer.ggml.model": Value(STRING, "gpt2"),
          "tokenizer.ggml.pre": Value(STRING, pre),
          "tokenizer.ggml.tokens": Value(ARRAY, tokens, STRING),
          "tokenizer.ggml.token_type": Value(ARRAY, types, I32),
          "tokenizer.ggml.merges": Value(ARRAY, merges, STRING),
          "tokenizer.ggml.add_bos_token": Value(BOOL, bool(bos)),
          "tokenizer.ggml.add_eos_token": Value(BOOL, bool(eos))}
    for key, i in special.items():
        if i is not None:
            md[f"tokenizer.ggml.{key}_token_id"] = Value(U32, int(i))
    md.update(chat_templates(tok))
    return md
