"""Punctuation of many texts in one pass (app/engine/punctuation.py) against FunASR's own generate().

The tiny model's marks are nonsense, but they are FunASR's nonsense: the batched pass must give,
text by text, exactly the marks that ``generate()`` gives for that text alone. The model's output
bias is moved between runs so that every rule gets exercised: carry-over at full stops and
question marks, the cut of a 200-word sentence at its last comma, the full stop forced at the
end, ``<unk>`` marks, and, for a word-level model (one that ships a jieba dictionary), the
expansion from words to characters.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from app.engine.punctuation import finished_ids, run_rounds, start_text

# Output biases over the classes <unk> _ ， 。 ？ 、 : the model as built, then commas only (so
# sentences grow past 200 words and get cut), full stops only, everything equally likely,
# and mostly <unk>.
BIASES = [None, [-9, -3, 3, -9, -9, 0], [-9, 0, -9, 3, -9, -9], [-9, 0, 0, 0, 0, 0], [0, 0, -9, -9, -9, -9]]


def punctuation_ids(model, tokenizer, texts: list[str], device: str, split_size: int = 20) -> list[list[int] | None]:
    """Per text of space-separated tokens, the mark id after each token (None for an empty text):
    all rounds of all texts in one pass, as PunctuationCall runs them without a round limit."""
    started = [start_text(model, tokenizer, text.split(" ") if text else [], split_size) for text in texts]
    run_rounds(model, [t for t in started if t is not None], device)
    return [None if t is None else finished_ids(model, t) for t in started]


def _load(model_dir):
    from funasr import AutoModel

    return AutoModel(model=str(model_dir), device="cpu", disable_update=True, disable_pbar=True, disable_log=True, check_latest=False, hub="ms")


def _texts(model, seed: int) -> list[str]:
    """Space-separated tokens as the ASR model writes them: characters, and a few ASCII words."""
    characters = [t for t in model.kwargs["tokenizer"].token_list if not t.startswith("<")][:300]
    vocab = [*characters, "hello", "World", "ok", "3.5", "etc."]
    rng = np.random.default_rng(seed)
    lengths = [*rng.integers(0, 40, 30), 0, 1, 2, 19, 20, 21, 45, 230, 900]
    return [" ".join(rng.choice(vocab, size=int(n))) for n in lengths]


def _generate_one_by_one(model, texts):
    out = []
    for text in texts:
        ids = model.generate(input=text, disable_pbar=True)[0].get("punc_array")
        out.append(None if ids is None else [int(i) for i in ids])
    return out


def _check_against_generate(model, texts):
    classes_seen = set()
    for bias in BIASES:
        if bias is not None:
            with torch.no_grad():
                model.model.decoder.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        batched = punctuation_ids(model.model, model.kwargs["tokenizer"], texts, "cpu")
        assert batched == _generate_one_by_one(model, texts), f"bias {bias}"
        classes_seen |= {i for ids in batched if ids for i in ids}
    return classes_seen


def test_batched_marks_equal_generate_text_by_text(tiny_models):
    model = _load(tiny_models.punc)
    assert model.model.jieba_usr_dict is None
    assert _check_against_generate(model, _texts(model, seed=0)) == set(range(len(model.model.punc_list)))


def test_word_level_model_marks_characters_like_generate(tiny_models, tmp_path):
    """A model directory with a jieba dictionary splits Chinese into words; marks come back per character."""
    word_level = tmp_path / "punc-words"
    shutil.copytree(tiny_models.punc, word_level)
    chars = [t for t in json.loads((word_level / "tokens.json").read_text(encoding="utf-8")) if not t.startswith("<")]
    words = [chars[i] + chars[i + 1] for i in range(0, 60, 2)] + [chars[i] + chars[i + 1] + chars[i + 2] for i in range(60, 90, 3)]
    (word_level / "jieba_usr_dict").write_text("".join(f"{w} 100\n" for w in words), encoding="utf-8")
    meta = json.loads((word_level / "configuration.json").read_text())
    meta["file_path_metas"]["jieba_usr_dict"] = "jieba_usr_dict"
    (word_level / "configuration.json").write_text(json.dumps(meta))

    model = _load(word_level)
    assert model.model.jieba_usr_dict is not None
    # Random characters, and texts made of the dictionary's words (written as the ASR writes them: a space between characters).
    texts = _texts(model, seed=3) + [" ".join("".join(words[k : k + n])) for k, n in ((0, 4), (5, 12), (28, 9), (2, 30))]
    batched = punctuation_ids(model.model, model.kwargs["tokenizer"], texts, "cpu")
    # One mark per character again (where ASCII words are mixed in, jieba may split them otherwise).
    chinese = [i for i, t in enumerate(texts) if t and not any(w.isascii() for w in t.split())]
    assert len(chinese) > 10
    assert [len(batched[i]) for i in chinese] == [len(texts[i].split()) for i in chinese]
    _check_against_generate(model, texts)


def test_empty_texts_have_no_marks_and_do_not_disturb_the_others(tiny_models):
    model = _load(tiny_models.punc)
    tokenizer = model.kwargs["tokenizer"]
    texts = _texts(model, seed=5)[:6]
    alone = punctuation_ids(model.model, tokenizer, texts, "cpu")
    mixed = punctuation_ids(model.model, tokenizer, ["", *texts[:3], "   ", *texts[3:]], "cpu")
    assert mixed[0] is None and mixed[4] is None
    assert mixed[1:4] + mixed[5:] == alone


@pytest.mark.parametrize("split_size", [2, 7])
def test_other_mini_sentence_sizes_match_generate(tiny_models, split_size):
    model = _load(tiny_models.punc)
    texts = _texts(model, seed=9)[:12]
    batched = punctuation_ids(model.model, model.kwargs["tokenizer"], texts, "cpu", split_size=split_size)
    expected = []
    for text in texts:
        ids = model.generate(input=text, disable_pbar=True, split_size=split_size)[0].get("punc_array")
        expected.append(None if ids is None else [int(i) for i in ids])
    assert batched == expected


def test_passes_of_a_few_rounds_mark_as_one_pass_does_with_texts_joining_between_them(tiny_models):
    """Resumable passes (PunctuationCall with max_rounds): every text's marks as generate() gives them,
    whichever texts share a call and however many rounds each call runs."""
    from app.engine.model_calls import PunctuationCall
    from app.engine.punctuation import TextProgress

    model = _load(tiny_models.punc)
    call = PunctuationCall(model, "cpu")
    texts = [t.split(" ") if t else [] for t in _texts(model, seed=11)]
    for bias in BIASES[:3]:  # as built; commas only (200-word sentences cut); full stops only
        if bias is not None:
            with torch.no_grad():
                model.model.decoder.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        expected = call(texts)  # every text to its end in one call
        assert not any(isinstance(r, TextProgress) for r in expected)
        for max_rounds in (1, 3):
            results: dict[int, object] = {}
            items: dict[int, object] = {}
            arriving = list(range(len(texts)))
            calls = 0
            while arriving or items:
                for i in arriving[:7]:  # a few new texts join every call
                    items[i] = texts[i]
                arriving = arriving[7:]
                keys = list(items)
                handed_back = [(p, p.next_round, list(p.marks)) for p in items.values() if isinstance(p, TextProgress)]
                answers = call([items[k] for k in keys], max_rounds)
                calls += 1
                # A call advances copies: should a pass fail, its texts are retried from where they were.
                assert all(p.next_round == n and p.marks == m for p, n, m in handed_back)
                for k, answer in zip(keys, answers, strict=True):
                    if isinstance(answer, TextProgress):
                        items[k] = answer
                    else:
                        results[k] = answer
                        del items[k]
            assert [results[i] for i in range(len(texts))] == expected, (bias, max_rounds)
            assert calls > len(texts) // 7 + 1  # the long texts (230, 900 tokens) did go round again
