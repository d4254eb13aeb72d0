"""A miniature, synthetic multi-domain English speech corpus for a CPU-sized AoDE experiment.

Text comes from per-domain template grammars (:mod:`aode.mini.textgen`), speech from espeak-ng
(:mod:`aode.mini.synth`, the only module that loads espeak-ng, GPL-3.0, from the optional
``espeakng-loader`` package: ``pip install -e .[mini]``), and domain effects from
:mod:`aode.mini.effects`. :func:`generate_corpus` writes manifests in the project's format
(:mod:`aode.manifest`); ``python -m aode.mini.corpus --out DIR`` does the same from the shell.
"""

__all__ = ["DEFAULT_CONFIG", "DOMAIN_SPECS", "generate_corpus", "plan_corpus"]


def __getattr__(name):
    # lazy, so that ``python -m aode.mini.corpus`` does not import the module twice
    if name in __all__:
        from aode.mini import corpus

        return getattr(corpus, name)
    raise AttributeError(f"module 'aode.mini' has no attribute {name!r}")
