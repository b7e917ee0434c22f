"""Stopword lists for the analyzer.

English is the classic SMART-derived list used by NLTK and bm25s (so oracle comparisons see the
same tokens); Chinese is a short list of function words that carry no topic.
"""

ENGLISH: frozenset[str] = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves
    """.split()
)

CHINESE: frozenset[str] = frozenset(
    """
    的 了 和 是 就 都 而 及 与 着 或 一个 没有 我们 你们 他们 它们 这 那 之 在 于 也 很 并 但 被
    把 让 从 对 向 为 以 所 其 中 等 吗 呢 吧 啊 得 地 个 这个 那个 这些 那些 什么 怎么 哪
    """.split()
)
