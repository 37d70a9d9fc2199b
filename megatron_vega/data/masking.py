"""MLM masking as small pure functions of a block and a random generator.

Every sample's randomness comes from ``sample_rng(seed, block_id, epoch)``, so a block's masking does not depend
on the order samples are drawn in, on how many data-parallel ranks share the work, or on restarts.

Three policies (``mask_block`` returns the input tokens and the positions scored by the loss):
- random (BERT): ``mask_prob`` of the non-special positions (rounded stochastically, so the expected count is
  exact), optionally as whole words; of those 1 - random - leave become [MASK], ``random_token_prob`` a random
  non-special token, ``leave_unmasked_prob`` stay unchanged. All of them are scored.
- none (self-evolution stage 1, "self-questioning"): the block unchanged, every non-pad position scored.
- positions (self-evolution stage 2): exactly the given positions become [MASK] and are scored (the official code
  applies no 80/10/10 there); callers fall back to random masking when a block has no positions.
"""
import numpy as np


def sample_rng(seed: int, block_id: int, epoch: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, block_id, epoch])))


def choose_positions(rng: np.random.Generator, candidates: np.ndarray, mask_prob: float) -> np.ndarray:
    """A bool mask of ``mask_prob`` of the candidate positions, chosen uniformly without replacement."""
    where = np.flatnonzero(candidates)
    count = int(mask_prob * len(where) + rng.random())
    chosen = np.zeros(len(candidates), dtype=bool)
    chosen[rng.choice(where, size=count, replace=False)] = True
    return chosen


def choose_whole_words(rng: np.random.Generator, candidates: np.ndarray, starts_word: np.ndarray,
                       mask_prob: float) -> np.ndarray:
    """A bool mask covering ``mask_prob`` of the words among the candidate positions, each word entirely.

    A word begins at a candidate whose token starts a word (``starts_word``) or that follows a non-candidate
    ([CLS], [SEP], …); it runs over the following candidates that do not start a word. Choosing words uniformly
    makes the expected share of masked tokens ``mask_prob`` too.
    """
    previous_is_candidate = np.concatenate([[False], candidates[:-1]])
    starts = candidates & (starts_word | ~previous_is_candidate)
    word_of = np.cumsum(starts) - 1  # word index per position; meaningful at candidates only
    words = int(starts.sum())
    count = int(mask_prob * words + rng.random())
    picked = np.zeros(max(words, 1), dtype=bool)
    picked[rng.choice(words, size=count, replace=False)] = True
    return candidates & picked[np.maximum(word_of, 0)]


def corrupt(rng: np.random.Generator, tokens: np.ndarray, chosen: np.ndarray, mask_id: int,
            random_token_prob: float, leave_unmasked_prob: float, random_pool: np.ndarray) -> np.ndarray:
    """BERT's 80/10/10: chosen positions become [MASK], a random token from ``random_pool``, or stay."""
    out = tokens.copy()
    where = np.flatnonzero(chosen)
    draw = rng.random(len(where))
    keep = draw < leave_unmasked_prob
    replace = ~keep & (draw < leave_unmasked_prob + random_token_prob)
    out[where[~keep & ~replace]] = mask_id
    out[where[replace]] = random_pool[rng.integers(0, len(random_pool), size=int(replace.sum()))]
    return out


def mask_positions(tokens: np.ndarray, positions: np.ndarray, mask_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly ``positions`` (indices into the block, [CLS] is 0) become [MASK] and are scored."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if positions.size and (positions.min() < 0 or positions.max() >= len(tokens)):
        raise ValueError(f"mask positions must lie in [0, {len(tokens)}), got {positions.min()}..{positions.max()}")
    chosen = np.zeros(len(tokens), dtype=bool)
    chosen[positions] = True
    out = tokens.copy()
    out[chosen] = mask_id
    return out, chosen


def mask_block(block: np.ndarray, rng: np.random.Generator, vocab, *, mask_prob: float, random_token_prob: float,
               leave_unmasked_prob: float, whole_word: bool, random_pool: np.ndarray,
               positions: np.ndarray | None = None, unmasked: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(input tokens, bool positions scored) for one block under the policy the arguments select.

    ``vocab`` supplies ``is_special``, ``word_start`` (bool per id), ``mask_id`` and ``pad_id``.
    """
    if unmasked:
        return block.copy(), block != vocab.pad_id
    if positions is not None:
        # An index mined before stage 1 excluded them may still name specials or padding: never mask those.
        positions = positions[~vocab.is_special[block[positions]]]
    if positions is not None and len(positions) > 0:
        return mask_positions(block, positions, vocab.mask_id)
    candidates = ~vocab.is_special[block]
    if whole_word:
        chosen = choose_whole_words(rng, candidates, vocab.word_start[block], mask_prob)
    else:
        chosen = choose_positions(rng, candidates, mask_prob)
    tokens = corrupt(rng, block, chosen, vocab.mask_id, random_token_prob, leave_unmasked_prob, random_pool)
    return tokens, chosen
