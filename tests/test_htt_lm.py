"""The chapter 5a language-model experiment (labkit.htt.lm): corpus, tokenizer, model, training. CPU, seconds."""
import math

import pytest
import torch
from torch import nn

from labkit.data import DatasetUnavailableError
from labkit.htt import lm

VOCAB = 512


@pytest.fixture(scope="module")
def corpus():
    return lm.load_corpus(200_000)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return lm.train_tokenizer(corpus.text, VOCAB)


@pytest.fixture(scope="module")
def token_ids(corpus, tokenizer):
    return lm.encode(tokenizer, corpus.text)


def test_corpus_is_deterministic_real_python(corpus):
    again = lm.load_corpus(200_000)
    assert again.sha256 == corpus.sha256 and again.text == corpus.text
    assert 180_000 < corpus.bytes <= 200_000 and corpus.bytes == len(corpus.text.encode())
    assert corpus.text.startswith("# file: ") and "def " in corpus.text and corpus.files > 1
    assert "standard library" in str(corpus) and corpus.sha256[:12] in str(corpus)
    assert lm.load_corpus(50_000).text == corpus.text[:len(lm.load_corpus(50_000).text)]  # a prefix


def test_corpus_skips_tests_and_bad_files_and_says_when_too_small(tmp_path):
    (tmp_path / "b.py").write_text("x = 1\n" * 50)
    (tmp_path / "a.py").write_text("y = 2\n" * 50)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "c.py").write_text("skipped = True\n")
    (tmp_path / "latin1.py").write_bytes(b"z = '\xe9'\n")  # not UTF-8
    small = lm.load_corpus(600, root=tmp_path)
    assert small.files == 2 and small.text.startswith("# file: a.py\ny = 2\n") and "skipped" not in small.text
    with pytest.raises(DatasetUnavailableError, match="asked for"):
        lm.load_corpus(100_000, root=tmp_path)
    with pytest.raises(DatasetUnavailableError):
        lm.load_corpus(1000, root=tmp_path / "nonexistent")


def test_tokenizer_round_trip_size_and_cache(corpus, tokenizer, token_ids, tmp_path):
    assert tokenizer.get_vocab_size() == VOCAB
    snippet = corpus.text[1000:4000] + "\n\tünïcödé → 🐍 \r\n"  # bytes the corpus may never show
    ids = lm.encode(tokenizer, snippet)
    assert ids.dtype == torch.long and ids.dim() == 1 and len(ids) < len(snippet)  # merges happened
    assert tokenizer.decode(ids.tolist()) == snippet
    assert tokenizer.decode(token_ids.tolist()) == corpus.text
    assert int(token_ids.max()) < VOCAB and len(token_ids) < corpus.bytes / 2  # > 2 bytes per token
    cached = lm.train_tokenizer(corpus.text, VOCAB, cache_dir=tmp_path)  # trains, saves
    assert [p.name for p in tmp_path.iterdir()] == [f"bpe-{corpus.sha256[:16]}-{VOCAB}.json"]
    assert cached.to_str() == tokenizer.to_str()  # deterministic training
    assert lm.train_tokenizer(corpus.text, VOCAB, cache_dir=tmp_path).to_str() == tokenizer.to_str()  # loads


def test_split_tokens():
    train, valid = lm.split_tokens(torch.arange(100), 0.1)
    assert torch.equal(train, torch.arange(90)) and torch.equal(valid, torch.arange(90, 100))
    with pytest.raises(ValueError):
        lm.split_tokens(torch.arange(100), 1.0)


def test_tiny_lm_shapes_and_causality():
    torch.manual_seed(0)
    model = lm.TinyLM(100, 32, 2, 4, 16).eval()
    assert isinstance(model.embedding, nn.Embedding) and model.head.weight is not model.embedding.weight
    ids = torch.randint(0, 100, (3, 10))
    logits = model(ids)
    assert logits.shape == (3, 10, 100) and torch.isfinite(logits).all()
    changed = ids.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 100
    after = model(changed)
    torch.testing.assert_close(after[:, :6], logits[:, :6])  # the past does not see the future
    assert not torch.allclose(after[:, 6:], logits[:, 6:])
    assert model(ids[:, :1]).shape == (3, 1, 100)


def test_tiny_lm_keeps_the_given_embedding_and_checks_its_input():
    embedding = nn.Embedding(100, 32)
    before = embedding.weight.detach().clone()
    model = lm.TinyLM(100, 32, 1, 2, 16, embedding)
    assert model.embedding is embedding and torch.equal(embedding.weight, before)  # not re-initialised
    with pytest.raises(ValueError, match="context=16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, time"):
        model(torch.zeros(16, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        model(torch.zeros(1, 4))
    with pytest.raises(ValueError, match="divisible"):
        lm.TinyLM(100, 30, 1, 4, 16)


def test_make_embedding_names():
    assert isinstance(lm.make_embedding("dense", 100, 16), nn.Embedding)
    with pytest.raises(ValueError, match="tt-r<rank>"):
        lm.make_embedding("tt16", 100, 16)
    try:
        emb = lm.make_embedding("tt-r4", 100, 16)
    except ImportError:
        pytest.skip("labkit.htt has no HolographicTTEmbedding yet")
    assert emb(torch.tensor([[1, 2, 3]])).shape == (1, 3, 16)


def test_short_training_learns_and_is_reproducible(token_ids):
    train, valid = lm.split_tokens(token_ids, 0.1)
    config = lm.LMConfig(steps=60, batch_size=16, context=64, lr=1e-2, warmup_steps=5, eval_every=30,
                         eval_batches=4)

    def run():
        torch.manual_seed(0)
        model = lm.TinyLM(VOCAB, 32, 2, 4, 64)
        start = lm.evaluate(model, valid, 64, 4, 16, "cpu")
        return start, lm.train_lm(model, train, valid, config, "cpu", desc="test")

    start, history = run()
    assert abs(start - math.log(VOCAB)) < 0.5  # untrained: about uniform over the vocabulary
    assert history["step"] == history["valid_step"] == [30, 60]
    assert len(history["train_loss"]) == len(history["valid_loss"]) == 2
    assert history["valid_loss"][-1] < history["valid_loss"][0] < start
    assert history["valid_loss"][-1] < math.log(VOCAB) - 1.0  # clearly better than uniform
    assert history["valid_ppl"] == pytest.approx(math.exp(history["valid_loss"][-1]))
    assert history["seconds"] > 0 and history["tokens_per_s"] > 0
    assert run()[1]["valid_loss"] == history["valid_loss"]  # same seed, same batches, same result
