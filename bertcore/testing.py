"""Small random BERT checkpoints for tests and the ``tiny`` preset (no network, seconds to build)."""

from pathlib import Path

__all__ = ["TINY_WORDS", "make_tiny_checkpoint"]

#: The vocabulary of the tiny checkpoints: BERT's special tokens plus common lowercase words.
TINY_WORDS = (
    "the a an is are was of to and in on at for with by from it this that he she they we you "
    "i man woman dog cat car house tree city river book music food water sun sky day night "
    "run runs running walk play plays playing read eat drink sleep big small red blue green "
    "old new good bad fast slow happy sad street park guitar horse beach market bank rain snow "
    "quick brown fox jumps over lazy . , ! ? ' s"
).split()


def make_tiny_checkpoint(directory, *, hidden=32, heads=4, ffn=64, layers=2, max_position=64,
                         seed=0):
    """Write a random ``BertModel`` checkpoint (config, safetensors, vocab.txt) to ``directory``.

    Returns the directory as a :class:`~pathlib.Path`.
    """
    import torch
    from transformers import BertConfig, BertModel

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(dict.fromkeys(TINY_WORDS))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_attention_heads=heads,
                     intermediate_size=ffn, num_hidden_layers=layers,
                     max_position_embeddings=max_position, hidden_act="gelu")
    torch.manual_seed(seed)
    model = BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():  # LayerNorm parameters away from (1, 0), so the folding is exercised
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            elif name.endswith("LayerNorm.bias"):
                p.copy_(0.1 * torch.randn_like(p))
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "tokenizer_config.json").write_text('{"do_lower_case": true}\n')
    return path
