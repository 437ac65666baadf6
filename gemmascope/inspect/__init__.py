"""What the latents mean: per-latent statistics and a static site to browse them.

Synopsis::

    from gemmascope import inspect
    cfg = inspect.default_config()                 # the study config's `inspect` section
    index = inspect.inspect(study_config, workdir)  # -> workdir/inspect/index.html (+ JSON)

Lower level: ``inspect_saes(model_cfg, model_params, tokens, saes, cfg, positions)`` measures a
list of ``eval.SaeEntry`` on given tokens (``scan``); ``stats`` holds the streaming per-latent
statistics, ``directions`` the logit effects and neighbours, ``records`` the JSON and ``site`` the
HTML. docs/inspect.md describes what is computed and how to open the site.
"""

from gemmascope.inspect import directions, latents, records, site, stats
from gemmascope.inspect.config import default_config, validate
from gemmascope.inspect.run import inspect
from gemmascope.inspect.scan import SaeInspection, inspect_saes

__all__ = [
    "SaeInspection",
    "default_config",
    "directions",
    "inspect",
    "inspect_saes",
    "latents",
    "records",
    "site",
    "stats",
    "validate",
]
