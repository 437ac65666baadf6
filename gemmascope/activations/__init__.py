"""Activation sources for SAE training: in-memory arrays, the on-disk cache, and streaming.

Every source has the interface the trainer uses, the protocol `ActivationSource`
(docs/internals.md):

    src.d_in; src.n_tokens; src.norm_scale          # batches are already x / norm_scale
    for batch in src.iter_batches(batch_size, sharding): ...   # global fp32 jax.Arrays
    state = src.state(); src.restore(state)          # exact resume

- `ArraySource(array, seed=0, norm_scale=None)`: an in-memory (tokens, d_in) array.
- `build_cache(config, workdir)`: writes workdir/activations/<kind>/<layer>/ for config.sites.
- `CacheSource(site_dir, seed=0)` / `open_source(workdir, site, seed)`: reads one site's cache.
- `StreamingSource(...)`: feeds batches straight from the model's forward pass.
- `PairedSource(inputs, targets)` / `open_paired_source(workdir, site, target_site, seed)`:
  (input, target) batches of two sites of the same tokens, for transcoders.
- `default_config()`: the `config.cache` section.

See docs/activations.md for the format, the shuffle and resume guarantees.
"""

from gemmascope.activations.array_source import ArraySource, estimate_norm_scale
from gemmascope.activations.config import default_config
from gemmascope.activations.paired import PairedSource, open_paired_source
from gemmascope.activations.reader import CacheSource, open_source
from gemmascope.activations.source import ActivationSource, check_source
from gemmascope.activations.storage import CacheError
from gemmascope.activations.streaming import StreamingSource
from gemmascope.activations.writer import build_cache

__all__ = [
    "ActivationSource",
    "ArraySource",
    "CacheError",
    "CacheSource",
    "PairedSource",
    "StreamingSource",
    "build_cache",
    "check_source",
    "default_config",
    "estimate_norm_scale",
    "open_paired_source",
    "open_source",
]
