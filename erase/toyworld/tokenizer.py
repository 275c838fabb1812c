"""Word-level tokenizer over the toy world's closed vocabulary.

Built in memory from `world.vocabulary()` with `tokenizers` (WordLevel) and wrapped in
`PreTrainedTokenizerFast`, so it saves as tokenizer.json next to the pipeline and `from_pretrained` restores
it without any download. Unknown words map to <unk> (attacks feed arbitrary words).
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from erase.toyworld.world import vocabulary

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)  # ids 0..3; eos_token_id is 3 because CLIP treats eos == 2 specially
MAX_LENGTH = 32  # text encoder max_position_embeddings must be >= this


def build_vocab() -> dict[str, int]:
    """Specials first, then the world's words (sorted, so ids are stable across builds)."""
    words = list(SPECIALS) + [w for w in vocabulary() if w not in SPECIALS]
    return {w: i for i, w in enumerate(words)}


def build_tokenizer(max_length: int = MAX_LENGTH) -> PreTrainedTokenizerFast:
    """The toy-world tokenizer: lowercase, split like `world.split_words`, add <bos> ... <eos>."""
    vocab = build_vocab()
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Whitespace split, then isolate runs of [a-z0-9] and single other characters: same as world.split_words.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[a-z0-9]+|[^a-z0-9]"), behavior="isolated")]
    )
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=max_length,
        padding_side="right",
    )
