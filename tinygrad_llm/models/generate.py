"""Book chapter 4, section 4.7, and chapter 5, section 5.3: text generation, pick each next token from
the model's logits for the last position, append it, repeat.

`generate` is the book's `generate_text_simple` (listing 4.8) with temperature 0 (greedy), and its
`generate` with temperature and top-k (listing 5.4) otherwise; top_p (nucleus sampling) goes beyond it.

Decoding: greedy (temperature 0), or sampling from softmax(logits / temperature) after keeping the
top_k largest logits, then the smallest set of tokens whose probabilities add up to top_p (nucleus).
Sampling runs on the host with a NumPy generator seeded by `seed`, so a seed gives the same text on
every device; each step copies only the last position's logits (B, vocab) from the device.

KV cache: the prompt is run once (prefill) and its keys and values kept; every later step feeds only
the new token, which attends to the cached ones. The logits are those of a full forward pass.
The window: as in the book, the model sees at most the last `context_length` tokens. While the
sequence fits, the cache grows by one token per step. Once it is longer, the window slides by one
each step, and since positions are absolute every cached key changes; the cache is then re-filled
with the window each step, exactly the book's cropped forward pass (so past the context length a
step costs as much as without a cache).

Kept between calls: `generate` and `stream` make a new cache for each call, unless they are given one,
a `PrefixCache`, which records the ids its keys and values belong to. A call then reuses the longest
common prefix of those ids and the window it is to feed, and feeds only the rest: a chat's next turn,
the conversation rendered again with the new message at its end, costs the new message's prefill, not
the whole conversation's. Whatever differs from what the cache holds (an earlier turn rendered anew
otherwise, another conversation, a window that slid) is computed again, so the tokens are always the
ones a fresh prefill gives.
"""

import codecs
import contextlib

import numpy as np

from autograd import Tensor, backend, nn, no_grad
from tinygrad_llm.models.gpt import KVCache


def sample_next(logits, rng, temperature=0.0, top_k=None, top_p=None):
    """Next ids (B,) from last-position logits (B, V) on the host: argmax when temperature is 0, else a
    draw from softmax(logits / temperature) restricted by top_k, then top_p (book sections 5.3.1-5.3.2)."""
    if temperature == 0.0:
        return logits.argmax(axis=-1)
    logits = logits / float(temperature)  # float32 stays float32
    if top_k is not None and top_k < logits.shape[-1]:
        kth = np.partition(logits, -top_k, axis=-1)[:, -top_k, None]  # the k-th largest per row
        logits = np.where(logits < kth, -np.inf, logits)  # ties with the k-th are kept, as in the book
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the more likely tokens
        keep = np.zeros_like(probs, dtype=bool)
        np.put_along_axis(keep, order, before < top_p, axis=-1)  # the most likely token always stays
        probs = np.where(keep, probs, 0.0)
    cdf = np.cumsum(probs, axis=-1, dtype=np.float64)
    u = rng.random(len(cdf)) * cdf[:, -1]
    ids = [np.searchsorted(row, x, side="right") for row, x in zip(cdf, u)]
    return np.minimum(np.array(ids, dtype=np.int64), logits.shape[-1] - 1)


def new_cache(model, batch_size):
    """An empty KV cache for `model`: the model's own (`model.new_cache(batch_size)`, as the Llama family's,
    whose cache holds n_kv_heads per layer), else GPT's `KVCache` on the device of its embedding."""
    if hasattr(model, "new_cache"):
        return model.new_cache(batch_size)
    weight = model.wte.weight
    return KVCache(model.config, batch_size, dtype=weight.dtype, device=weight.device)


class PrefixCache:
    """A KV cache and the ids whose keys and values it holds, kept from one call of `generate` or
    `stream` to the next (`cache=`), so that a call whose ids start as the last one's did feeds only
    the ids after them. One chat keeps one:

        cache = PrefixCache(model)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        answer = list(stream(model, ids, 100, cache=cache))  # prefills all of ids
        ... the answer and the next message appended to messages, rendered again ...
        answer = list(stream(model, ids, 100, cache=cache))  # prefills the ids after the cached ones

    A KV cache alone does not know its tokens; `ids` (B, n) does. Each forward pass keeps the longest
    common prefix of `ids` and the window the model is to see from position 0, rolls the cache back to
    it (positions past `length` are written over), and feeds the rest of the window; at least its last
    id is fed, whose logits pick the next token. Ids that differ from the cached ones, at any place, are
    computed again, so a cache never gives other tokens than a fresh prefill (up to float rounding
    between one product and two).

    subtle: the token a generation yields last is never fed to the model (nothing reads its logits), so
    after a chat turn the cache holds the prompt and the answer but its last token; the next turn's
    rendering feeds that token again, with the new message.

    The cache belongs to one model, on the device the model was on when it was made, with its weights
    as they were: after changing them (a training step, `merge_lora`), call `reset()`.
    """

    def __init__(self, model, batch_size=1):
        self.model = model
        self.kv = new_cache(model, batch_size)
        self.ids = np.zeros((batch_size, 0), dtype=np.int64)  # (B, n): the ids of positions 0 .. n-1

    @property
    def length(self):
        return self.ids.shape[1]

    def reset(self):
        """Forget every cached position."""
        self.ids = self.ids[:, :0]
        self.kv.reset()

    def reusable(self, window):
        """How many leading ids of `window` (B, T) the cache holds already: the longest common prefix of
        theirs and its ids, at most T - 1 (the last id is always fed)."""
        n = min(self.length, window.shape[1] - 1)
        same = (self.ids[:, :n] == window[:, :n]).all(axis=0)  # (n,): the positions every row agrees at
        return n if same.all() else int(same.argmin())

    def __call__(self, window):
        """The model's last-position logits (B, 1, V) for `window` (B, T), the sequence the model sees
        from position 0, fed only the ids the cache does not hold. Run it under no_grad()."""
        if window.shape[0] != self.ids.shape[0]:
            raise ValueError(f"this PrefixCache holds {self.ids.shape[0]} sequence(s); got a batch of "
                             f"{window.shape[0]} (make a PrefixCache(model, batch_size={window.shape[0]}))")
        keep = self.reusable(window)
        # rolled back before the forward pass: one that is interrupted leaves no position unaccounted for
        self.ids, self.kv.length = self.ids[:, :keep], keep
        logits = self.model(window[:, keep:], self.kv, last_only=True)  # (B, T - keep) -> (B, 1, V)
        self.ids = window.copy()
        return logits


def _steps(model, ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache, cache=None):
    """Yield the next ids (B,) one step at a time; `ids` (B, T) is the host sequence so far, `cache` a
    PrefixCache to continue (else a new one, with `use_cache`)."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if cache is not None:
        if not isinstance(cache, PrefixCache):  # a bare KVCache does not know which ids it holds
            raise TypeError(f"cache must be a PrefixCache (which records the ids it holds), got {type(cache).__name__}")
        if not use_cache:
            raise ValueError("use_cache=False with a cache: pass one or the other")
        if cache.model is not model:
            raise ValueError("this PrefixCache was made for another model; make one per model")
    elif use_cache:
        cache = PrefixCache(model, len(ids))
    ctx = model.config.context_length
    rng = np.random.default_rng(seed)
    # eval mode once for the whole generation rather than around every forward pass (a walk over every
    # module twice per token); an abandoned stream restores the mode when it is closed
    with nn.eval_mode(model):
        for _ in range(max_new_tokens):
            window = ids[:, max(0, ids.shape[1] - ctx):]  # the book's crop: the last context_length tokens
            with no_grad():  # per forward pass: grad mode is global, and the caller runs between yields
                # (B, T) -> (B, 1, V); with a cache, only the ids it does not hold: the new token, or
                # the whole window once it slides (every position changed)
                logits = model(window, last_only=True) if cache is None else cache(window)
            last = backend.to_host(logits.data[:, -1, :])  # (B, V): the one copy from the device per step
            nxt = sample_next(last, rng, temperature, top_k, top_p)
            yield nxt
            ids = np.concatenate([ids, nxt[:, None]], axis=1)


def _as_batch(ids):
    ids = backend.to_host(ids.data) if isinstance(ids, Tensor) else np.asarray(ids)
    if ids.ndim not in (1, 2) or ids.shape[-1] == 0 or ids.dtype.kind not in "iu":
        raise ValueError(f"ids must be a non-empty integer sequence (T,) or batch (B, T), got {ids.dtype} {ids.shape}")
    return ids.astype(np.int64).reshape(-1, ids.shape[-1]), ids.ndim == 1


def _stop_array(eos_id):
    """eos_id as an int64 array of the ids that end a sequence: None -> none, one id, or a collection of
    them (a chat model's `tokenizer.stop_ids`: eos and the end-of-turn tokens)."""
    if eos_id is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(eos_id, (int, np.integer)):
        return np.array([eos_id], dtype=np.int64)
    return np.array(sorted(int(i) for i in eos_id), dtype=np.int64)


def generate(model, ids, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None, eos_id=None, seed=None,
             use_cache=True, on_token=None, cache=None):
    """Continue `ids` ((T,) or (B, T) integers: a list, array or Tensor) by up to `max_new_tokens` tokens
    (book listings 4.8 and 5.4: `generate_text_simple` and `generate`).

    Returns the whole sequence as NumPy int64, (T + new,) or (B, T + new). Generation stops when every
    row has produced `eos_id` (one id, or a set of them: a chat model's stop ids); as in the book the
    end-of-text token itself is not appended (in a batch, a row that ends early is padded with the id it
    ended at until the others end). `on_token(ids)` is called with each step's new ids (B,) as they come.
    `cache`: a PrefixCache kept from an earlier call, whose ids that `ids` starts with are not fed again.
    """
    batch, flat = _as_batch(ids)
    stops = _stop_array(eos_id)
    done = np.zeros(len(batch), dtype=bool)
    pad = np.zeros(len(batch), dtype=np.int64)  # the id each finished row ended at
    new = []
    # closing(): a `break` at end-of-text closes the steps at once, so the model's mode is back on return
    steps = _steps(model, batch, max_new_tokens, temperature, top_k, top_p, seed, use_cache, cache)
    with contextlib.closing(steps):
        for nxt in steps:
            if len(stops):
                ended = np.isin(nxt, stops) & ~done
                pad[ended] = nxt[ended]
                done |= ended
                if done.all():
                    break
                nxt = np.where(done, pad, nxt)
            new.append(nxt)
            if on_token is not None:
                on_token(nxt)
    out = np.concatenate([batch] + [n[:, None] for n in new], axis=1)
    return out[0] if flat else out


def stream(model, ids, max_new_tokens, *, temperature=0.0, top_k=None, top_p=None, eos_id=None, seed=None,
           use_cache=True, cache=None):
    """Yield each new token id (a Python int) of one sequence as it is chosen; same arguments and the
    same tokens as `generate`. Pair with `decode_stream` to print text as it comes."""
    batch, _ = _as_batch(ids)
    stops = set(_stop_array(eos_id).tolist())
    if len(batch) != 1:
        raise ValueError(f"stream generates one sequence; got a batch of {len(batch)} (use generate)")
    # subtle: closing this generator (the caller stops early) raises GeneratorExit at the yield below;
    # closing() then closes the inner steps, whose `finally` restores the model's mode. Without it the
    # inner generator is closed only when the interpreter collects it, which no version promises to do
    # at once, and until then the model would stay in eval mode.
    steps = _steps(model, batch, max_new_tokens, temperature, top_k, top_p, seed, use_cache, cache)
    with contextlib.closing(steps):
        for nxt in steps:
            if int(nxt[0]) in stops:
                return
            yield int(nxt[0])


def decode_stream(tokenizer, token_ids):
    """Yield text pieces for a stream of token ids. GPT-2's tokens are bytes, and one character can span
    two tokens, so bytes are held back until they complete a UTF-8 character (an incremental decoder);
    the pieces join to `tokenizer.decode(all ids)`."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for i in token_ids:
        piece = decoder.decode(tokenizer.decode_bytes([i]))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail


__all__ = ["generate", "stream", "decode_stream", "sample_next", "PrefixCache"]
