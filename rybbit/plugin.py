"""Everything a plugin author imports: ``from rybbit.plugin import hookimpl, Enricher``.

See docs/plugins.md. Names here are the stable public API.
"""

from .enrichment import Enricher, EnrichmentContext
from .hookspecs import hookimpl

__all__ = ["Enricher", "EnrichmentContext", "hookimpl"]
