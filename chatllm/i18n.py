"""The app's own words in English, Traditional Chinese and Simplified Chinese.

Chainlit translates its own interface from `.chainlit/translations`; these are the
strings this app adds (slider labels, errors, notices).
"""

from __future__ import annotations

Lang = str

_EN: dict[str, str] = {
    "temperature": "Temperature",
    "temperature.help": "Higher is more varied, lower is more focused. 0 always picks the likeliest token.",
    "top_p": "Top P",
    "top_p.help": "Sample only from the smallest set of tokens whose probabilities add up to this.",
    "top_k": "Top K",
    "top_k.help": "Sample only from this many likeliest tokens (0 = no limit).",
    "repeat_penalty": "Repeat penalty",
    "repeat_penalty.help": "Above 1 discourages repeating recent tokens. Local model only.",
    "max_tokens": "Max new tokens",
    "max_tokens.help": "The reply stops after this many tokens.",
    "seed": "Seed",
    "seed.placeholder": "random",
    "seed.help": "A whole number repeats a reply exactly; empty draws a new random seed each time.",
    "system_prompt": "System prompt",
    "system_prompt.help": "Instructions the model sees before the conversation.",
    "settings.refused": "Those settings were not applied: {problems}. The previous values are kept.",
    "queue.waiting": "The local model is busy — {ahead} request(s) ahead of yours. Your reply starts as soon as it is free.",
    "error.unreachable": "Cannot reach the model endpoint at {url}. Is the server running? ({detail})",
    "error.timeout": "The model endpoint did not answer within {seconds:g} seconds. Try again, or raise CHATLLM_OPENAI_TIMEOUT.",
    "error.auth": "The model endpoint refused the API key (HTTP {status}). Check CHATLLM_OPENAI_API_KEY.",
    "error.not_found": "The endpoint at {url} answered “404 Not Found”. Check CHATLLM_OPENAI_BASE_URL (it usually ends in /v1).",
    "error.unknown_model": "The endpoint does not serve the model {model!r}. Pick another chat profile.",
    "error.context": "Your message is too long for the model: it needs about {needed} tokens, and the model's context has room for {available} (after reserving space for the reply). Shorten the message or lower “Max new tokens”.",
    "error.context.unknown": "Your message and the conversation are too long for the endpoint's model. Shorten the message, lower “Max new tokens”, or start a new chat.",
    "error.store": "Not saved, so not sent to the model: {detail}. Please try again; if it persists, check the disk and the database file.",
    "error.backend": "The model could not answer: {detail}",
    "error.unexpected": "Something went wrong while answering ({kind}). The app is still running; please try again.",
    "notice.endpoint_unavailable": "The endpoint’s models are not offered right now: {reason} The local model is available.",
    "profile.local": "Local · {model}",
    "profile.local.desc": "Runs **{model}** on this machine with llama.cpp. Works offline.",
    "profile.remote": "{model} · endpoint",
    "profile.remote.desc": "Sends messages to **{model}** at the OpenAI-compatible endpoint {url}.",
}

_ZH_TW: dict[str, str] = {
    "temperature": "溫度",
    "temperature.help": "越高越多變，越低越集中。0 一律選最可能的詞元。",
    "top_p": "Top P",
    "top_p.help": "只從機率加總達此值的最小詞元集合中取樣。",
    "top_k": "Top K",
    "top_k.help": "只從最可能的前 K 個詞元中取樣（0 表示不限）。",
    "repeat_penalty": "重複懲罰",
    "repeat_penalty.help": "大於 1 會減少重複最近的詞元。僅適用本機模型。",
    "max_tokens": "最多新詞元數",
    "max_tokens.help": "回覆達到此詞元數即停止。",
    "seed": "種子",
    "seed.placeholder": "隨機",
    "seed.help": "填入整數可完全重現回覆；留空則每次隨機抽取。",
    "system_prompt": "系統提示詞",
    "system_prompt.help": "模型在對話之前看到的指示。",
    "settings.refused": "設定未套用：{problems}。已保留先前的數值。",
    "queue.waiting": "本機模型忙碌中，前面還有 {ahead} 個請求。輪到你時會立即開始回覆。",
    "error.unreachable": "無法連線到模型端點 {url}。伺服器是否已啟動？（{detail}）",
    "error.timeout": "模型端點在 {seconds:g} 秒內沒有回應。請再試一次，或調高 CHATLLM_OPENAI_TIMEOUT。",
    "error.auth": "模型端點拒絕了 API 金鑰（HTTP {status}）。請檢查 CHATLLM_OPENAI_API_KEY。",
    "error.not_found": "端點 {url} 回應「404 Not Found」。請檢查 CHATLLM_OPENAI_BASE_URL（通常以 /v1 結尾）。",
    "error.unknown_model": "端點沒有提供模型 {model!r}。請選擇其他聊天設定檔。",
    "error.context": "訊息太長：約需 {needed} 個詞元，但模型的上下文（保留回覆空間後）只容得下 {available} 個。請縮短訊息或調低「最多新詞元數」。",
    "error.context.unknown": "訊息加上對話內容超出端點模型的長度上限。請縮短訊息、調低「最多新詞元數」，或開始新對話。",
    "error.store": "未能儲存，因此沒有送給模型：{detail}。請再試一次；若仍失敗，請檢查磁碟與資料庫檔案。",
    "error.backend": "模型無法回覆：{detail}",
    "error.unexpected": "回覆時發生錯誤（{kind}）。應用程式仍在執行，請再試一次。",
    "notice.endpoint_unavailable": "目前無法提供端點上的模型：{reason} 本機模型仍可使用。",
    "profile.local": "本機 · {model}",
    "profile.local.desc": "以 llama.cpp 在這台電腦上執行 **{model}**，離線也能使用。",
    "profile.remote": "{model} · 端點",
    "profile.remote.desc": "將訊息送到 OpenAI 相容端點 {url} 上的 **{model}**。",
}

_ZH_CN: dict[str, str] = {
    "temperature": "温度",
    "temperature.help": "越高越多样，越低越集中。0 总是选择最可能的词元。",
    "top_p": "Top P",
    "top_p.help": "只从概率累计达到此值的最小词元集合中采样。",
    "top_k": "Top K",
    "top_k.help": "只从最可能的前 K 个词元中采样（0 表示不限）。",
    "repeat_penalty": "重复惩罚",
    "repeat_penalty.help": "大于 1 会减少重复最近的词元。仅适用于本地模型。",
    "max_tokens": "最多新词元数",
    "max_tokens.help": "回复达到此词元数即停止。",
    "seed": "种子",
    "seed.placeholder": "随机",
    "seed.help": "填入整数可完全重现回复；留空则每次随机抽取。",
    "system_prompt": "系统提示词",
    "system_prompt.help": "模型在对话之前看到的指示。",
    "settings.refused": "设置未应用：{problems}。已保留之前的数值。",
    "queue.waiting": "本地模型正忙，前面还有 {ahead} 个请求。轮到你时会立即开始回复。",
    "error.unreachable": "无法连接到模型端点 {url}。服务器是否已启动？（{detail}）",
    "error.timeout": "模型端点在 {seconds:g} 秒内没有响应。请重试，或调高 CHATLLM_OPENAI_TIMEOUT。",
    "error.auth": "模型端点拒绝了 API 密钥（HTTP {status}）。请检查 CHATLLM_OPENAI_API_KEY。",
    "error.not_found": "端点 {url} 返回“404 Not Found”。请检查 CHATLLM_OPENAI_BASE_URL（通常以 /v1 结尾）。",
    "error.unknown_model": "端点没有提供模型 {model!r}。请选择其他聊天配置。",
    "error.context": "消息太长：约需 {needed} 个词元，但模型的上下文（预留回复空间后）只容得下 {available} 个。请缩短消息或调低“最多新词元数”。",
    "error.context.unknown": "消息加上对话内容超出端点模型的长度上限。请缩短消息、调低“最多新词元数”，或开始新对话。",
    "error.store": "未能保存，因此没有发送给模型：{detail}。请重试；如仍失败，请检查磁盘和数据库文件。",
    "error.backend": "模型无法回复：{detail}",
    "error.unexpected": "回复时出错（{kind}）。应用仍在运行，请重试。",
    "notice.endpoint_unavailable": "目前无法提供端点上的模型：{reason} 本地模型仍可使用。",
    "profile.local": "本地 · {model}",
    "profile.local.desc": "用 llama.cpp 在本机运行 **{model}**，离线可用。",
    "profile.remote": "{model} · 端点",
    "profile.remote.desc": "将消息发送到 OpenAI 兼容端点 {url} 上的 **{model}**。",
}

CATALOGUES: dict[str, dict[str, str]] = {"en": _EN, "zh-TW": _ZH_TW, "zh-CN": _ZH_CN}


def normalize(language: str | None) -> Lang:
    """Map a browser language tag (zh-Hant-TW, zh_hk, zh, en-GB …) onto a catalogue."""
    tag = (language or "en").replace("_", "-").lower()
    if not tag.startswith("zh"):
        return "en"
    if any(part in tag for part in ("tw", "hk", "mo", "hant")):
        return "zh-TW"
    return "zh-CN"


def t(key: str, language: str | None = None, **values: object) -> str:
    """The text for `key` in the user's language, falling back to English."""
    catalogue = CATALOGUES[normalize(language)]
    template = catalogue.get(key) or _EN[key]
    return template.format(**values) if values else template
