"""An example rybbit-track plugin (see docs/plugins.md in rybbit-track).

It registers one enricher, ``title_words``, which runs after the built-in ``device`` enricher
and adds two fields to every event: ``title_words`` (how many words the page title has) and
``tag`` (from this plugin's settings, ``PLUGIN_SETTINGS = {"example": {"tag": "..."}}``).
"""

from rybbit.plugin import Enricher, hookimpl


class TitleWords(Enricher):
    name = "title_words"
    after = ("device",)

    def __init__(self, tag):
        self.tag = tag

    def enrich(self, event, context):
        event["title_words"] = len((event.get("page_title") or "").split())
        event["tag"] = self.tag
        if event.get("device_type") == "Bot":
            event["tag"] += "-bot"


@hookimpl
def register_enrichers(register, settings):
    register(TitleWords(tag=settings.get("tag", "example")))
