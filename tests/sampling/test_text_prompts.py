"""Issue 26 (a user's first hour): text prompts go through the model's tokenizer, a model without
one says so in one line, and None for block_length/steps means the default."""
import pytest
import torch

import qpass
from qpass.errors import QpassError
from qpass.sampling import (decode_generated, encode_prompts, generate, generate_dream,
                            generate_llada, generated_ids, prompt_width)


class CharTokenizer:
    """A stand-in tokenizer: one id per character (ids 0..29, clear of the special ids)."""
    eos_token_id = None

    def encode(self, text):
        return [ord(c) % 30 for c in text]

    def decode(self, ids):
        return "".join(chr(65 + i) for i in ids)


def _ids(text):
    return CharTokenizer().encode(text)


def test_a_str_prompt_is_encoded_with_the_model_tokenizer(recording):
    """Before: generate(model, "ROMEO:") was a raw TypeError from torch.as_tensor."""
    m = recording()
    m.tokenizer = CharTokenizer()
    by_text = generate(m, "ROMEO:", gen_length=8, steps=8, block_length=8)
    by_ids = generate(m, torch.tensor([_ids("ROMEO:")]), gen_length=8, steps=8, block_length=8)
    assert torch.equal(by_text, by_ids)
    assert by_text[0, :6].tolist() == _ids("ROMEO:")            # the encoded prompt, as is


def test_a_list_of_str_is_several_prompts_left_padded(recording):
    m = recording()
    m.tokenizer = CharTokenizer()
    texts = ["ROMEO:", "JULIET: O"]
    by_text = generate(m, texts, gen_length=8, steps=8, block_length=8)
    by_ids = generate(m, [_ids(t) for t in texts], gen_length=8, steps=8, block_length=8)
    assert torch.equal(by_text, by_ids)
    assert prompt_width(texts, m.tokenizer) == 9
    assert generated_ids(by_text, texts, tokenizer=m.tokenizer) == by_text[:, 9:].tolist()
    assert decode_generated(by_text, texts, m.tokenizer) == \
        [m.tokenizer.decode(r) for r in by_text[:, 9:].tolist()]


def test_the_dream_sampler_encodes_text_too(shifted):
    m = shifted()
    m.tokenizer = CharTokenizer()
    assert torch.equal(generate_dream(m, "ab", gen_length=6, steps=6),
                       generate_dream(m, [_ids("ab")], gen_length=6, steps=6))


def test_text_without_a_tokenizer_is_one_error_line(recording):
    m = recording()                                    # config, no tokenizer
    for prompt in ("ROMEO:", ["a", "b"]):
        with pytest.raises(QpassError) as e:
            generate(m, prompt, gen_length=8, steps=8, block_length=8)
        msg = str(e.value)
        assert "\n" not in msg and "tokenizer" in msg and "token ids" in msg
    assert m.calls == []                                       # nothing ran
    with pytest.raises(QpassError, match="no tokenizer to encode it"):
        prompt_width("ROMEO:")
    assert encode_prompts(None, [1, 2]) == [1, 2]              # ids pass through untouched


def test_a_str_where_the_model_goes_is_one_error_line():
    with pytest.raises(QpassError, match="loaded denoiser"):
        generate("tiny-llada", "ROMEO:", gen_length=8)


def test_block_length_and_steps_none_mean_the_default(recording):
    """Before: block_length=None was TypeError("'<=' not supported between NoneType and int")."""
    m = recording()
    prompt = [[3, 4, 5]]
    explicit = generate_llada(m, prompt, gen_length=64, steps=64, block_length=32)
    assert torch.equal(generate_llada(m, prompt, gen_length=64, steps=64, block_length=None),
                       explicit)
    assert torch.equal(generate_llada(m, prompt, gen_length=64, steps=None, block_length=None),
                       explicit)                               # steps None: gen_length
    assert torch.equal(generate_llada(m, prompt, gen_length=64, steps=64), explicit)
    # where 32 does not divide gen_length, None is one block (32 would be an error)
    assert torch.equal(generate_llada(m, prompt, gen_length=16, steps=16, block_length=None),
                       generate_llada(m, prompt, gen_length=16, steps=16, block_length=16))
    with pytest.raises(QpassError, match="not a multiple"):
        generate_llada(m, prompt, gen_length=16, steps=16, block_length=32)


def test_zoo_model_generates_from_text():
    m = qpass.models.load("tiny-llada")
    ids = generate(m, "ROMEO:", gen_length=8, steps=8)
    prompt = m.tokenizer.encode("ROMEO:")
    assert ids[0, :len(prompt)].tolist() == list(prompt) and ids.shape[1] == len(prompt) + 8
