"""`StreamingSource`: an `ActivationSource` fed straight by the model's forward pass.

For runs that do not store activations (docs/recipe.md#storage: storing pays only when many runs
reuse them):

    src = StreamingSource.from_config(config, "resid_post/12", seed=0)   # study config
    src = StreamingSource(model_cfg, params, sequences, "resid_post/12")  # or explicit parts
    for batch in src.iter_batches(4096, sharding): ...   # global fp32 (4096, d_in), x / C

The stream (per process; docs/activations.md):
- with P processes, process p owns sequences p, p+P, p+2P, ...; epoch e visits them in an order
  permuted with seed (seed, e, p), so every kept token of them appears once per epoch;
- consecutive groups of `buffer_tokens // seq_len` sequences form a shuffle buffer: they are
  run through the model together, their kept tokens (BOS/EOS/pad and any `exclude`d position,
  such as the chat user prefix, dropped) permuted with seed
  (seed, e, p, window), and emitted in that order; only one buffer is held in memory;
- each process contributes its devices' rows of every global batch from its own stream
  (`jax.make_array_from_process_local_data`), so the batches depend on the process count.

Everything is a function of (seed, position), so `state()` is one integer and `restore` rebuilds
the current buffer by re-running its forward pass: resumed runs see exactly the same batches.
C is estimated once, identically on every process, from the first sequences in corpus order.
`hold_out(n)` reserves the corpus's last sequences with at least n kept tokens: no process streams
them, and their last n kept tokens are the held-out rows (every process computes the same ones).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from gemmascope import model
from gemmascope.activations import global_batch as global_batch_lib
from gemmascope.activations.array_source import check_norm_scale, estimate_norm_scale
from gemmascope.activations.capture import Capturer, TokenLayout
from gemmascope.activations.shuffle import check_seed
from gemmascope.activations.source import check_hold_out
from gemmascope.activations.source_position import PositionState
from gemmascope.model import params as lm_params


class StreamingSource(PositionState):
    """Shuffled, normalised, sharded batches computed on the fly from token sequences.

    Attributes:
      d_in: width of the site.
      n_tokens: None (a stream has no fixed size in the interface's sense).
      norm_scale: the scalar C; batches hold x / C.
      site: the site name.
    """

    def __init__(
        self,
        model_cfg,
        params,
        sequences: np.ndarray,
        site: str,
        seed: int = 0,
        buffer_tokens: int = 1 << 18,
        forward_batch: int = 8,
        drop_special: bool = True,
        norm_scale: float | None = None,
        norm_sample_tokens: int = 1 << 16,
        exclude: np.ndarray | None = None,
        model_parallel: int = 1,
    ):
        """Sets up the stream (and, if norm_scale is None, estimates C with a forward pass).

        Args:
          model_cfg: the model's `GemmaConfig` (Gemma 2 or 3).
          params: its params.
          sequences: int32 (N, T) token sequences, BOS first (`data.sequences`).
          site: one concrete site, e.g. "resid_post/12".
          seed: non-negative integer fixing the order.
          buffer_tokens: tokens shuffled together (rounded to whole sequences).
          forward_batch: sequences per forward pass.
          drop_special: drop BOS/EOS/pad positions, as the cache does.
          norm_scale: C; None estimates it from about `norm_sample_tokens` tokens.
          norm_sample_tokens: sample size for estimating C.
          exclude: optional bool (N, T), True at positions never emitted, whatever
            `drop_special` says: pass `data.user_prefix_mask(data_cfg, tokenizer, sequences)`
            for chat-wrapped data (`from_config` does).
          model_parallel: local devices the model's params are sharded over
            (`cache.model_parallel`); forward batches split over the rest. Params loaded with
            `model.load_hf(..., mesh=model.params.lm_mesh(model_parallel))` are used in place.

        Raises:
          ValueError: for an unknown site (listing valid ones), a bad seed, sizes or scale.
        """
        if not isinstance(site, str) or any(c in site for c in "*?["):
            raise ValueError(f"StreamingSource takes one concrete site, got {site!r}")
        model.sites.check(model_cfg, site)
        self.site = site
        self._seed = check_seed(seed)
        if (
            isinstance(buffer_tokens, bool)
            or not isinstance(buffer_tokens, int)
            or buffer_tokens < 1
        ):
            raise ValueError(f"buffer_tokens must be a positive integer, got {buffer_tokens!r}")
        self._layout = TokenLayout.build(
            sequences, model_cfg.special_token_ids, drop_special, exclude=exclude
        )
        self.d_in = model.sites.dim(model_cfg, site)
        self.n_tokens = None
        self._capturer = Capturer(
            model_cfg, params, [site], "float32", forward_batch, model_parallel=model_parallel
        )
        n_sequences, seq_len = self._layout.sequences.shape
        self._window_sequences = max(1, buffer_tokens // seq_len)
        # This process's share of the sequences: every P-th one, fixed for all epochs.
        self._mine = np.arange(jax.process_index(), n_sequences, jax.process_count())
        if len(self._mine) == 0:
            raise ValueError(f"{n_sequences} sequences cannot feed {jax.process_count()} processes")
        self._epoch_tokens = int(self._layout.keep[self._mine].sum())
        if norm_scale is None:
            wanted = min(n_sequences, math.ceil(norm_sample_tokens / seq_len))
            sample = self._kept_rows(np.arange(wanted))
            self.norm_scale = estimate_norm_scale(sample)
        else:
            self.norm_scale = check_norm_scale(norm_scale)
        self._position = 0
        self._epoch_cache: tuple[int, np.ndarray, np.ndarray] | None = None
        self._held_out: np.ndarray | None = None

    def hold_out(self, n_tokens: int) -> np.ndarray:
        """The last `n_tokens` kept tokens of the corpus's last sequences (fp32, x / C).

        Those sequences leave every process's share of the stream.
        """
        kept = self._layout.keep.sum(axis=1)
        n_sequences = len(kept)
        # The last sequences each process may give up, keeping at least one sequence per process.
        available = int(kept[jax.process_count() :].sum())
        n_tokens = check_hold_out(n_tokens, available, self._held_out)
        if self._held_out is None:
            from_end = np.cumsum(kept[::-1])
            first = n_sequences - int(np.searchsorted(from_end, n_tokens)) - 1
            rows = self._kept_rows(np.arange(first, n_sequences))[-n_tokens:]
            self._held_out = rows / np.float32(self.norm_scale)
            self._mine = self._mine[self._mine < first]
            self._epoch_tokens = int(self._layout.keep[self._mine].sum())
            self._epoch_cache = None
        return self._held_out.copy()

    @classmethod
    def from_config(cls, config, site: str, seed: int = 0, **kwargs) -> StreamingSource:
        """Loads the model (config.model) and sequences (config.data, config.cache.split).

        With `config.data.chat_wrap` the user-prefix tokens are excluded (`data.user_prefix_mask`).
        The params are loaded straight into their shards on `config.cache.model_parallel`
        devices.
        """
        from gemmascope import data
        from gemmascope.activations import writer

        section = ml_collections.ConfigDict(
            {"model": config.model, "data": config.data, "sites": [site]}
        )
        model_cfg, folder, tokenizer, _, dtype = writer.load_inputs(section)
        cache = config.get("cache")
        split = cache.split if cache is not None else "train"
        sequences = data.sequences(config.data, tokenizer, split)
        kwargs.setdefault("exclude", data.user_prefix_mask(config.data, tokenizer, sequences))
        if cache is not None:
            kwargs.setdefault("drop_special", cache.drop_special)
            kwargs.setdefault("forward_batch", cache.batch_size)
            kwargs.setdefault("model_parallel", cache.model_parallel)
        mesh = lm_params.lm_mesh(kwargs.get("model_parallel", 1), field="cache.model_parallel")
        _, params = model.load_hf(folder, dtype=writer.MODEL_DTYPES[dtype], mesh=mesh)
        return cls(model_cfg, params, sequences, site, seed=seed, **kwargs)

    def stream_key(self) -> tuple:
        """What fixes this stream's token order (`paired.PairedSource` pairs equal keys).

        The seed, the buffer, and the sequences and kept tokens this process streams.
        """
        digest = hashlib.sha256(np.ascontiguousarray(self._layout.sequences).tobytes())
        digest.update(np.packbits(self._layout.keep).tobytes())
        digest.update(np.asarray(self._mine, np.int64).tobytes())
        return ("StreamingSource", self._seed, self._window_sequences, digest.hexdigest())

    def _kept_rows(self, sequence_ids: np.ndarray) -> np.ndarray:
        """fp32 (kept tokens, d_in) of the given sequences, in order."""
        out = []
        for lo in range(0, len(sequence_ids), self._capturer.batch_size):
            ids = sequence_ids[lo : lo + self._capturer.batch_size]
            acts = self._capturer.forward(self._layout.sequences[ids].astype(np.int32))
            out.append(acts[self.site][self._layout.keep[ids]])
        return np.concatenate(out)

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """This process's sequences in epoch order, and where each window starts in tokens."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            seed = [self._seed, epoch, jax.process_index()]
            order = np.random.default_rng(seed).permutation(self._mine)
            kept = self._layout.keep[order].sum(axis=1)
            window_kept = np.add.reduceat(kept, np.arange(0, len(order), self._window_sequences))
            starts = np.concatenate([[0], np.cumsum(window_kept)])
            self._epoch_cache = (epoch, order, starts)
        return self._epoch_cache[1], self._epoch_cache[2]

    def _window(self, epoch: int, window: int) -> np.ndarray:
        mine, _ = self._epoch(epoch)
        k = self._window_sequences
        rows = self._kept_rows(mine[window * k : (window + 1) * k])
        seed = [self._seed, epoch, jax.process_index(), window + 1]
        return rows[np.random.default_rng(seed).permutation(len(rows))]

    def _local_rows(self, batch_size: int, sharding) -> int:
        index_map = sharding.addressable_devices_indices_map((batch_size, self.d_in))
        slices = {idx[0].indices(batch_size)[:2] for idx in index_map.values()}
        return sum(b - a for a, b in slices)

    def iter_batches(self, batch_size: int, sharding: jax.sharding.Sharding) -> Iterator[jax.Array]:
        """Yields global fp32 (batch_size, d_in) arrays laid out per `sharding`, forever."""
        batch_size = global_batch_lib.check_batch_sharding(batch_size, self.d_in, sharding)
        local = self._local_rows(batch_size, sharding)
        scale = np.float32(self.norm_scale)

        def produce(position):
            current = (None, None, None)  # (epoch, window, rows)
            while True:
                pieces, need, pos = [], local, position
                while need:
                    epoch, offset = divmod(pos, self._epoch_tokens)
                    _, starts = self._epoch(epoch)
                    window = int(np.searchsorted(starts, offset, side="right")) - 1
                    if current[:2] != (epoch, window):
                        current = (epoch, window, self._window(epoch, window))
                    lo = offset - int(starts[window])
                    take = min(need, len(current[2]) - lo)
                    pieces.append(current[2][lo : lo + take])
                    need -= take
                    pos += take
                rows = np.concatenate(pieces) / scale
                position = pos
                yield (
                    position,
                    jax.make_array_from_process_local_data(sharding, rows, (batch_size, self.d_in)),
                )

        for position, batch in global_batch_lib.prefetch(produce(self._position), 1):
            self._position = position
            yield batch
