"""The lists behind Rybbit's traffic channels: which referrer domains, utm_source and
utm_medium values and app ids belong to which kind of source.

Facts gathered from Rybbit's tracker (server/src/services/tracker/const.ts and
shared/src/aiOperators.ts at zehjotkah/rybbit@10e13e1f, the fork holding the handler this
service follows). Spelling, case and order are theirs on purpose: domains match as
substrings of the referrer's host in the order of ``DOMAINS`` (so ``youtube.com`` is social,
listed there before video), names match whole, and app ids with capitals never match the
lower-cased ``utm_source`` they are compared with, just as in Rybbit.
"""

from __future__ import annotations

AI_DOMAINS = (
    "chatgpt.com",
    "chat.openai.com",
    "claude.ai",
    "gemini.google.com",
    "copilot.microsoft.com",
    "perplexity.ai",
    "meta.ai",
    "chat.mistral.ai",
    "mistral.ai",
    "grok.com",
    "you.com",
    "cursor.com",
    "coral.cohere.com",
    "deepseek.com",
    "chat.deepseek.com",
    "poe.com",
    "pi.ai",
    "heypi.com",
    "character.ai",
    "qwen.ai",
    "jasper.ai",
    "writesonic.com",
    "chatsonic.com",
    "phind.com",
    "andi.com",
    "codeium.com",
)
SEARCH_DOMAINS = (
    "google.com", "google.", "bing.com", "bing.", "yahoo.com", "yahoo.", "search.yahoo.",
    "duckduckgo.com", "duck.com", "baidu.com", "baidu.", "yandex.com", "yandex.", "ya.ru",
    "qwant.com", "search.", "ecosia.org", "brave.com", "startpage.com", "searchencrypt.com",
    "searx.", "swisscows.com", "mojeek.com", "gibiru.com", "metager.org", "search.aol.com",
    "lycos.com", "wolframalpha.com", "ask.com", "dogpile.com", "webcrawler.com", "naver.com",
    "daum.net", "seznam.cz", "coccoc.com", "yam.com", "so.com", "sogou.com", "goo.ne.jp",
    "rambler.ru", "neeva.com", "kagi.com",
)  # fmt: skip
SOCIAL_DOMAINS = (
    "facebook.com", "fb.com", "fb.me", "messenger.com", "m.facebook.com", "instagram.com",
    "instagram.", "ig.me", "twitter.com", "t.co", "x.com", "linkedin.com", "lnkd.in",
    "tiktok.com", "tiktok.", "vm.tiktok.com", "pinterest.com", "pinterest.", "pin.it",
    "reddit.com", "redd.it", "old.reddit.com", "snapchat.com", "snap.com", "youtube.com",
    "youtu.be", "discord.com", "discord.gg", "whatsapp.com", "wa.me", "telegram.org", "t.me",
    "medium.com", "tumblr.com", "tmblr.co", "quora.com", "threads.net", "mastodon.social",
    "mastodon.", "slack.com", "nextdoor.com", "clubhouse.com", "twitch.tv",
    "news.ycombinator.com", "hn.algolia.com", "bluesky.app", "bsky.app", "post.news",
    "truth.social", "truthsocial.com", "gettr.com", "parler.com", "gab.com", "minds.com",
    "diaspora.", "lemmy.", "kbin.social", "bereal.com", "vsco.co", "flickr.com", "flic.kr",
    "500px.com", "deviantart.com", "behance.net", "dribbble.com", "xing.com", "viadeo.com",
    "meetup.com", "wechat.com", "weixin.qq.com", "vk.com", "qq.com", "weibo.com", "weibo.cn",
    "line.me", "kakaotalk.com", "viber.com", "ok.ru", "odnoklassniki.ru",
)  # fmt: skip
VIDEO_DOMAINS = (
    "youtube.com", "youtu.be", "vimeo.com", "twitch.tv", "dailymotion.com", "netflix.com",
    "disneyplus.com", "hulu.com", "hbomax.com", "max.com", "peacocktv.com", "primevideo.com",
    "amazon.com/prime-video", "paramountplus.com", "discoveryplus.com", "crunchyroll.com",
    "funimation.com", "curiositystream.com", "mubi.com", "appletv.com", "tv.apple.com",
    "tiktok.com", "vm.tiktok.com", "vevo.com", "streamable.com", "bitchute.com", "rumble.com",
    "odysee.com", "lbry.tv", "reels.instagram.com", "ted.com", "khanacademy.org",
    "skillshare.com", "udemy.com", "masterclass.com", "coursera.org", "pluralsight.com",
    "lynda.com", "linkedin.com/learning", "facebook.com/gaming", "youtube.com/live", "kick.com",
    "caffeine.tv", "mixer.com", "bilibili.com", "niconico.jp", "vlive.tv", "youku.com",
    "tudou.com", "iqiyi.com", "vine.co", "byte.co", "triller.co", "likee.video",
)  # fmt: skip
SHOPPING_DOMAINS = (
    "amazon.com", "amazon.", "ebay.com", "ebay.", "etsy.com", "walmart.com", "target.com",
    "aliexpress.com", "wish.com", "shopify.com", "shop.app", "asos.com", "zara.com",
    "forever21.com", "hm.com", "gap.com", "macys.com", "nordstrom.com", "net-a-porter.com",
    "farfetch.com", "fashionnova.com", "shein.com", "romwe.com", "zaful.com", "boohoo.com",
    "prettylittlething.com", "bestbuy.com", "newegg.com", "bhphotovideo.com", "apple.com/shop",
    "samsung.com/shop", "microcenter.com", "tigerdirect.com", "wayfair.com", "ikea.com",
    "homedepot.com", "lowes.com", "overstock.com", "cb2.com", "crateandbarrel.com",
    "westelm.com", "taobao.com", "jd.com", "rakuten.com", "flipkart.com", "lazada.com",
    "mercadolibre.com", "ozon.ru", "allegro.pl", "coupang.com", "gmarket.co.kr", "shopee.com",
    "tokopedia.com", "bukalapak.com", "instacart.com", "freshdirect.com", "ocado.com",
    "groceries.", "doordash.com", "ubereats.com", "grubhub.com", "deliveroo.com",
    "postmates.com", "seamless.com", "foodpanda.com",
)  # fmt: skip
# Checked in this order, the first list with a substring of the host deciding.
DOMAINS = (
    ("ai", AI_DOMAINS),
    ("search", SEARCH_DOMAINS),
    ("social", SOCIAL_DOMAINS),
    ("video", VIDEO_DOMAINS),
    ("shopping", SHOPPING_DOMAINS),
)

# utm_source values, whole, in this order.
SOURCES = (
    ("ai", frozenset({
        "chatgpt", "openai", "claude", "anthropic", "gemini", "copilot", "deepseek", "mistral",
        "meta ai", "metaai", "poe", "grok", "pi", "huggingchat", "cohere", "character.ai",
        "qwen", "jasper", "writesonic", "chatsonic", "perplexity", "phind", "andi", "you",
        "cursor", "codeium", "windsurf", "lechat",
    })),
    ("search", frozenset({
        "google", "bing", "yahoo", "duckduckgo", "baidu", "yandex", "qwant", "ecosia", "brave",
        "startpage", "searchencrypt", "swisscows", "mojeek", "gibiru", "metager", "wolframalpha",
        "ask", "dogpile", "webcrawler", "aol", "naver", "daum", "seznam", "coccoc", "yam", "so",
        "sogou", "goo", "rambler", "neeva", "kagi",
    })),
    ("social", frozenset({
        "facebook", "twitter", "linkedin", "instagram", "tiktok", "pinterest", "reddit",
        "snapchat", "youtube", "discord", "whatsapp", "telegram", "medium", "tumblr", "quora",
        "threads", "mastodon", "slack", "nextdoor", "clubhouse", "twitch", "hacker news",
        "hackernews", "ycombinator", "fb", "ig", "pin", "li", "tw", "yt", "bluesky", "bsky",
        "post", "truth social", "gettr", "parler", "gab", "minds", "diaspora", "lemmy", "kbin",
        "bereal", "vsco", "flickr", "500px", "deviantart", "behance", "dribbble", "xing",
        "viadeo", "meetup", "wechat", "weixin", "vk", "qq", "weibo", "line", "kakao",
        "kakaotalk", "viber", "ok", "odnoklassniki",
    })),
    ("video", frozenset({
        "youtube", "vimeo", "twitch", "dailymotion", "tiktok", "disneyplus", "netflix", "hulu",
        "hbomax", "max", "peacock", "prime video", "paramount+", "discovery+", "crunchyroll",
        "funimation", "curiositystream", "mubi", "apple tv", "appletv", "vevo", "streamable",
        "bitchute", "rumble", "odysee", "lbry", "reels", "ted", "khanacademy", "skillshare",
        "udemy", "masterclass", "coursera", "pluralsight", "lynda", "kick", "caffeine", "mixer",
        "bilibili", "niconico", "vlive", "youku", "tudou", "iqiyi", "vine", "byte", "triller",
        "likee",
    })),
    ("shopping", frozenset({
        "amazon", "ebay", "etsy", "shopify", "walmart", "target", "aliexpress", "wish", "shop",
        "store", "shopping", "asos", "zara", "forever21", "hm", "gap", "macys", "nordstrom",
        "net-a-porter", "farfetch", "fashionnova", "shein", "romwe", "zaful", "boohoo",
        "prettylittlething", "bestbuy", "newegg", "bhphotovideo", "apple", "samsung",
        "microcenter", "tigerdirect", "wayfair", "ikea", "homedepot", "lowes", "overstock",
        "cb2", "crateandbarrel", "westelm", "taobao", "jd", "rakuten", "flipkart", "lazada",
        "mercadolibre", "ozon", "allegro", "coupang", "gmarket", "shopee", "tokopedia",
        "bukalapak", "instacart", "freshdirect", "ocado", "groceries", "doordash", "ubereats",
        "grubhub", "deliveroo", "postmates", "seamless", "foodpanda",
    })),
    ("email", frozenset({
        "email", "e_mail", "e-mail", "mail", "newsletter", "mailchimp", "campaign-archive",
        "sendgrid", "mailgun", "constantcontact", "klaviyo", "hubspot", "marketo", "brevo",
        "sendinblue", "getresponse", "activecampaign", "mailerlite", "convertkit", "drip",
        "gmail", "yahoo", "outlook", "hotmail", "list", "blast", "campaign",
    })),
    ("sms", frozenset({
        "sms", "text", "twilio", "message", "whatsapp", "viber", "line", "imessage",
    })),
)  # fmt: skip

CPC_MEDIUMS = (
    "cpc", "ppc", "paid-search", "search-ads", "google-ads", "bing-ads", "yahoo-ads",
    "adwords", "sem", "paid-click",
)  # fmt: skip
CPM_MEDIUMS = (
    "cpm", "display-ads", "banner-ads", "impression", "programmatic", "rtb", "dsp",
    "demand-side", "supply-side", "ad-exchange",
)  # fmt: skip
DISPLAY_MEDIUMS = (
    "display", "interstitial", "banner", "ad", "advert", "advertisement", "rich-media",
    "popup", "popunder", "overlay", "expandable", "floating", "skin", "wallpaper", "native",
    "programmatic", "dsp", "retargeting", "remarketing", "impression",
)  # fmt: skip
# utm_medium values, whole, in this order.
MEDIUMS = (
    ("ai", frozenset({
        "ai", "ai-chat", "chatbot", "llm", "ai-assistant", "gen-ai", "ai-search",
    })),
    ("social", frozenset({
        "sm", "social-media", "social-network", "social", "community", "forum",
        "organic-social", "feed", "share", "repost", "tweet", "post", "update", "engagement",
        "ugc", "user-generated", "social_post",
    })),
    ("video", frozenset({
        "video", "youtube", "vimeo", "streaming", "live", "tv", "ott", "broadcast", "clip",
        "trailer", "episode", "series", "documentary", "film", "movie", "animation", "video_ad",
        "pre-roll", "mid-roll", "post-roll",
    })),
    ("display", frozenset(DISPLAY_MEDIUMS)),
    ("affiliate", frozenset({
        "affiliate", "aff", "partner", "partnership", "commission", "rev-share", "performance",
        "cpa", "lead-gen", "lead-generation",
    })),
    ("referral", frozenset({
        "referral", "link", "app", "invite", "recommendation", "advocate", "refer-a-friend",
        "share", "web", "embed", "backlink", "qr", "qr-code", "deeplink", "vanity-url",
    })),
    ("email", frozenset({
        "email", "e_mail", "e-mail", "mail", "newsletter", "digest", "bulletin",
        "marketing_email", "promotional", "transactional", "notification_email", "alert",
        "confirmation", "update", "news",
    })),
    ("push", frozenset({
        "push", "notification", "mobile", "app-notification", "web-notification",
        "browser-notification", "alert", "toast", "prompt", "pwa", "install",
    })),
    ("audio", frozenset({
        "audio", "podcast", "radio", "broadcast", "streaming", "music", "playlist", "episode",
        "show", "airplay", "song", "track", "voice", "audio_ad", "spot", "jingle", "commercial",
    })),
    ("influencer", frozenset({
        "influencer", "creator", "sponsored", "collaboration", "brand-ambassador",
        "micro-influencer", "macro-influencer", "nano-influencer", "ugc-creator",
        "content-creator", "partnership", "endorsement",
    })),
    ("cpc", frozenset(CPC_MEDIUMS)),
    ("cpm", frozenset(CPM_MEDIUMS)),
    ("content", frozenset({
        "content", "blog", "article", "guest-post", "editorial", "pr", "press-release", "news",
        "publication", "magazine", "journal", "whitepaper", "case-study", "resource",
    })),
    ("event", frozenset({
        "event", "conference", "webinar", "workshop", "seminar", "meetup", "trade-show", "expo",
        "summit", "networking", "live-event", "virtual-event",
    })),
)  # fmt: skip

# A utm_medium containing any of these (as a substring: "broadcast" contains "ad") is paid.
PAID_MEDIUM_PARTS = (
    *CPC_MEDIUMS, *CPM_MEDIUMS, *DISPLAY_MEDIUMS,
    "paid", "ad", "ads", "advertising", "sponsored", "promotion",
)  # fmt: skip
# A utm_source containing any of these is paid.
PAID_SOURCE_PARTS = (
    "google ads", "googleads", "bing ads", "facebook ads", "instagram ads", "twitter ads",
    "linkedin ads", "tiktok ads", "youtube ads", "pinterest ads",
)  # fmt: skip

# Mobile app ids (a utm_source like "com.reddit.frontpage"), per kind. In getChannel's first
# step an id matches as a substring of the source, in getSourceType only whole.
APP_IDS = (
    ("social", (
        "com.facebook", "com.facebook.katana", "com.facebook.facebook", "com.facebook.messenger",
        "com.facebook.orca", "com.instagram", "com.instagram.android", "com.burbn.instagram",
        "com.twitter", "com.twitter.android", "com.atebits.tweetie2", "com.zhiliaoapp.musically",
        "com.tiktok", "com.snapchat", "com.snapchat.android", "com.toyopagroup.picaboo",
        "com.linkedin", "com.linkedin.android", "com.linkedin.LinkedIn", "com.pinterest",
        "com.reddit", "com.reddit.frontpage", "com.reddit.reddit", "com.discord",
        "com.hammerandchisel.discord", "org.telegram", "org.telegram.messenger",
        "ph.telegra.Telegraph", "com.whatsapp", "com.instagram.barcelona", "com.threads",
        "xyz.blueskyweb.app", "org.joinmastodon.android", "com.bereal.ft", "com.vsco.cam",
        "com.slack", "im.vector.app", "com.nextdoor", "com.clubhouse.app",
    )),
    ("video", (
        "com.google.android.youtube", "com.google.ios.youtube", "com.google.ios.youtubekids",
        "com.google.android.apps.youtube.kids", "com.google.ios.youtubeunplugged",
        "com.google.android.youtube.tv", "com.netflix", "com.disney.disneyplus", "com.hulu",
        "com.hbo.hbonow", "com.hbo.hbomax", "com.peacocktv", "com.amazon.avod",
        "com.amazon.amazonvideo", "com.cbs.app", "com.paramountplus", "tv.twitch",
        "tv.twitch.android.app", "com.vimeo", "com.dailymotion",
    )),
    ("ai", (
        "com.openai.chatgpt", "com.anthropic.claude", "com.google.android.apps.bard",
        "com.microsoft.copilot", "ai.perplexity.app.android", "ai.perplexity.app.ios",
        "com.quora.poe", "ai.character.app", "com.deepseek.chat",
    )),
    ("search", (
        "com.google.android.googlequicksearchbox", "com.google.android.websearch",
        "com.microsoft.bing", "com.yahoo.mobile.client.android.search", "com.yahoo.search",
        "com.duckduckgo.mobile.android", "com.duckduckgo.mobile.ios", "com.ecosia.android",
        "com.brave.browser", "org.mozilla.firefox", "com.microsoft.emmx",
    )),
    ("email", (
        "com.google.android.gm", "com.google.android.gm.lite", "com.google.Gmail",
        "com.microsoft.office.outlook", "com.microsoft.outlooklite",
        "com.microsoft.Office.Outlook", "com.yahoo.mobile.client.android.mail",
        "com.yahoo.Aerogram", "com.apple.mobilemail", "ch.protonmail.android",
        "ch.protonmail.protonmail", "com.superhuman.mail", "com.superhuman.Superhuman",
        "com.samsung.android.email.provider", "me.bluemail.mail", "com.easilydo.mail",
        "org.kman.AquaMail", "com.aol.mobile.aolapp", "ru.mail.mailapp", "ru.mail.mail",
        "ru.yandex.mail", "com.pingapp.app", "com.readdle.smartemail",
    )),
    ("shopping", (
        "com.amazon.mShop", "com.amazon.shopping", "com.ebay.mobile", "com.walmart.android",
        "com.target.ui", "com.etsy.android", "com.shopify.mobile", "com.contextlogic.wish",
        "com.alibaba.aliexpresshd", "com.zzkko", "com.wayfair.wayfair", "com.newegg.app",
        "com.bestbuy.android", "com.ikea.app", "com.homedepot", "com.lowes.android",
        "com.overstock",
    )),
    ("news", (
        "com.cnn.mobile.android.phone", "com.foxnews.android", "com.nytimes.android",
        "com.washingtonpost.rainbow", "com.wsj.reader", "com.usatoday.android.news",
        "com.bbc.news", "com.reuters.android", "com.ap.mobile", "com.nbcuni.nbc",
        "com.aol.mobile.techcrunch", "com.theverge.verge", "com.wired.android",
        "com.arstechnica.app", "com.engadget.android", "com.google.android.apps.magazines",
        "flipboard.app", "com.apple.news", "com.microsoft.amp.apps.bingnews",
    )),
    ("productivity", (
        "com.microsoft.office.word", "com.microsoft.office.excel",
        "com.microsoft.office.powerpoint", "com.microsoft.teams",
        "com.google.android.apps.docs", "com.google.android.apps.docs.editors.sheets",
        "com.google.android.apps.docs.editors.slides", "com.google.android.apps.meetings",
        "com.evernote", "us.zoom.videomeetings", "com.notion.id", "md.obsidian",
        "com.dropbox.android",
    )),
)  # fmt: skip
