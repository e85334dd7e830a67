"""A chat agent grounded in the current candidates (PlugIR-style), with no LLM required.

One round of the agent:

1. **Rank.** Every round's query (the caption, then the caption rewritten with the answers
   so far) is searched; each round's scores are z-normalised over the candidate pool and
   averaged with the earlier rounds' (answers re-rank, they do not restart), and the
   candidates' own evidence (their captions' attributes) adds a bonus for every attribute
   the user confirmed and a penalty for every attribute the user denied.
2. **Ask.** The next question is about the attribute whose yes/no answer splits the current
   top candidates best: the expected information gain (binary entropy of "yes") under a
   softmax of the combined scores. Attributes already asked, given in the caption, or
   implied by earlier answers ("red circle" confirmed implies "red"; "red" denied implies
   "red circle" denied) are skipped.
3. **Reformulate.** The caption and the confirmed attributes become one caption-like query;
   question text is never pasted, "I don't know" adds nothing, and denied attributes are
   penalties, not query words.

What counts as an attribute is an :class:`AttributeVocabulary`: :class:`CaptionWords`
(content words of captions with plural/verb folding and a few synonyms; works on real
photos) is the default; a domain supplies its own (the shapes world's lives in its recipes).

Classes: :class:`DialogAgent` (ranking and one turn), :class:`CandidateQuestioner` (the
LLM-free questioner), :class:`LLMCandidateQuestioner` (an LLM picks and phrases the question
from the same candidate evidence), :class:`RuleReformulator` and :class:`LLMReformulator`.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vistrieve.llm import CachedLLM, ChatLLM
from vistrieve.llm.prompts import DIALOG_SUMMARY, PromptTemplate, parse_field, sanitize
from vistrieve.types import DialogTurn, Hit, Query, Retriever

logger = logging.getLogger(__name__)

YES, NO, UNKNOWN, OTHER = "yes", "no", "unknown", "other"
"""Kinds of answers (:func:`answer_kind`)."""

_UNKNOWN_PHRASES = (
    "don't know",
    "dont know",
    "do not know",
    "not sure",
    "no idea",
    "can't tell",
    "cannot tell",
    "can't see",
    "cannot see",
    "unknown",
    "unsure",
    "maybe",
)
_YES_WORDS = {"yes", "yeah", "yep", "yup", "sure", "correct", "right", "true", "indeed"}
_NO_WORDS = {"no", "nope", "not", "none", "false", "nah", "never"}
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?")


def answer_kind(answer: str) -> str:
    """``"yes"``, ``"no"``, ``"unknown"`` ("I don't know", empty) or ``"other"`` (free form).

    Example:
        >>> [answer_kind(a) for a in ("Yes, a dog", "no", "I don't know", "a red circle")]
        ['yes', 'no', 'unknown', 'other']
    """
    text = answer.strip().lower()
    if not text or any(p in text for p in _UNKNOWN_PHRASES):
        return UNKNOWN
    words = _TOKEN.findall(text)
    if not words:
        return UNKNOWN
    if words[0] in _YES_WORDS:
        return YES
    if words[0] in _NO_WORDS:
        return NO
    return OTHER


# ----------------------------------------------------------------------------- vocabulary
@runtime_checkable
class AttributeVocabulary(Protocol):
    """What an attribute is in a domain: how texts mention them and how to ask about them.

    Attributes are canonical strings. ``parts`` gives the atoms an attribute is made of:
    confirming an attribute confirms every attribute whose parts are a subset of its parts,
    and denying one denies every attribute whose parts are a superset.
    """

    name: str

    def attributes(self, text: str) -> frozenset[str]:
        """The attributes a text (a caption, a question, an answer) mentions."""
        ...

    def question(self, attribute: str) -> str:
        """A yes/no question about ``attribute``."""
        ...

    def phrase(self, attribute: str) -> str:
        """``attribute`` as a caption fragment ("a dog", "a red circle on the left")."""
        ...

    def parts(self, attribute: str) -> frozenset[str]:
        """The atoms of ``attribute`` (for implication between attributes)."""
        ...


STOPWORDS = frozenset(
    """a an the and or of in on at to for with by from into onto over under near is are was
    were be been being this that these those there here it its his her their them they he she
    we you i me my our your some any each other another while as up down out off through
    about above below against along across behind beside between around front back top
    one two three four five six seven eight nine ten several many few both all very
    has have had do does did can could will would should may might just also than then
    what which who whom whose where when how why not no yes something anything someone
    anyone somebody nothing image picture photo photograph shot scene view shown showing
    see seen looking look like kind lot lots bunch group side other another different
    large small big little other another onto away together each next young old wear
    wearing dressed area outside outdoors inside""".split()
)
"""Words that never become attributes of :class:`CaptionWords`."""

COLOUR_WORDS = frozenset(
    "red green blue yellow purple orange white black brown grey gray pink cyan tan".split()
)
SYNONYMS: Mapping[str, str] = {
    "puppy": "dog",
    "puppies": "dog",
    "doggy": "dog",
    "kid": "child",
    "kids": "child",
    "children": "child",
    "toddler": "child",
    "guy": "man",
    "men": "man",
    "gentleman": "man",
    "women": "woman",
    "lady": "woman",
    "ladies": "woman",
    "people": "person",
    "persons": "person",
    "bike": "bicycle",
    "bicyclist": "cyclist",
    "biker": "cyclist",
    "ocean": "sea",
    "gray": "grey",
    "colour": "color",
    "feet": "foot",
    "teeth": "tooth",
    "mice": "mouse",
    "geese": "goose",
}
"""Word -> canonical word folded by :func:`canonical_word` (irregular plurals included)."""

_KEEP_S = ("ss", "us", "is", "ous")
ANIMALS = frozenset(
    "dog cat horse cow sheep bird duck goat pig bull camel elephant chicken deer pony".split()
)
PEOPLE = frozenset(
    """man woman boy girl child baby person skier surfer cyclist climber player rider
    snowboarder swimmer skateboarder worker biker crowd""".split()
)
HYPERNYMS: Mapping[str, frozenset[str]] = {
    "person": PEOPLE,
    "child": frozenset({"boy", "girl", "baby"}),
    "animal": ANIMALS,
}
"""A word and the words it covers: a caption naming a boy names a child and a person."""
WORD_GROUPS: tuple[frozenset[str], ...] = (
    PEOPLE,
    ANIMALS,
    frozenset("car bicycle motorcycle boat bus truck train skateboard surfboard".split()),
    frozenset("beach snow street road field mountain pool lake river city forest".split()),
)
"""Salient kinds of thing. Once the caption or an answer names one member, the questioner
does not ask about the others (the subject is known), and a caption-based user who does not
find the asked member says "no"."""
_PLURAL_SURFACES = frozenset("children men women people kids puppies ladies feet teeth".split())
MASS_NOUNS = frozenset(
    """grass water snow sand dirt mud sky air ice rain hay gravel concrete pavement grassland
    foliage traffic clothing fire smoke food""".split()
)


def canonical_word(word: str) -> str:
    """Fold a lower-case word: synonyms and irregular plurals, plural ``-s``, verb ``-s``
    and ``-ing`` ("dogs" -> "dog", "running" -> "run", "rides"/"riding" -> "ride").

    Example:
        >>> [canonical_word(w) for w in ("dogs", "puppies", "running", "riding", "grass")]
        ['dog', 'dog', 'run', 'ride', 'grass']
    """
    w = word.lower().strip("'")
    if w in SYNONYMS:
        return SYNONYMS[w]
    if len(w) > 5 and w.endswith("ing"):
        stem = w[:-3]
        if len(stem) >= 3 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
            stem = stem[:-1]  # running -> run, swimming -> swim
        elif (
            len(stem) >= 3
            and stem[-1] not in "aeiouwxy"
            and stem[-2] in "aeiou"
            and stem[-3] not in "aeiou"
            and stem[-2:] not in ("en", "er", "el", "on", "om", "it", "ot")
        ) or stem[-1] in "cv":
            stem += "e"  # riding -> ride, smiling -> smile, dancing -> dance
        w = stem
    elif len(w) > 4 and w.endswith("ies"):
        w = w[:-3] + "y"
    elif len(w) > 4 and w.endswith(("ches", "shes", "xes", "sses")):
        w = w[:-2]
    elif len(w) > 3 and w.endswith("s") and not w.endswith(_KEEP_S):
        w = w[:-1]
    return SYNONYMS.get(w, w)


def content_words(text: str, stopwords: frozenset[str] = STOPWORDS) -> list[tuple[str, str]]:
    """``(canonical, surface)`` for every content word of ``text``, in order."""
    out = []
    for tok in _TOKEN.findall(text.lower()):
        tok = tok.split("'")[0]
        if len(tok) < 3 or tok in stopwords:
            continue
        c = canonical_word(tok)
        if c and c not in stopwords and len(c) >= 3:
            out.append((c, tok))
    return out


class CaptionWords:
    """Caption content words as attributes: the default vocabulary, for real photos.

    Attributes are canonical words (:func:`canonical_word`); questions are phrased from the
    most frequent surface form seen ("Is anything red?", "Is someone running?", "Is there a
    dog?").
    """

    name = "caption-words"
    exact = False
    """Captions mention only part of what an image shows: evidence shares stay soft."""

    def __init__(self, stopwords: frozenset[str] = STOPWORDS) -> None:
        self.stopwords = stopwords
        self._surface: dict[str, Counter[str]] = {}

    def attributes(self, text: str) -> frozenset[str]:
        """Canonical content words of ``text`` (surface forms are remembered for phrasing)."""
        out = set()
        for c, surface in content_words(text, self.stopwords):
            out.add(c)
            self._surface.setdefault(c, Counter())[surface] += 1
        return frozenset(out)

    def surface(self, attribute: str) -> str:
        """The surface form to phrase ``attribute`` with: an ``-ing`` form when one was seen
        (a verb), else the word itself when it was seen, else the most frequent form."""
        seen = self._surface.get(attribute)
        if not seen:
            return attribute
        verbs = [(w, n) for w, n in seen.most_common() if w.endswith("ing")]
        if verbs and 5 * sum(n for _, n in verbs) >= sum(seen.values()):
            return verbs[0][0]
        if attribute in seen:
            return attribute
        return seen.most_common(1)[0][0]

    def question(self, attribute: str) -> str:
        """A yes/no question about the word."""
        w = self.surface(attribute)
        if attribute in COLOUR_WORDS:
            return f"Is anything {w} in the picture?"
        if w.endswith("ing"):
            return f"Is someone or something {w}?"
        if w in _PLURAL_SURFACES or (w.endswith("s") and not w.endswith(_KEEP_S)):
            return f"Are there {w} in the picture?"
        if attribute in MASS_NOUNS:
            return f"Is there {w} in the picture?"
        return f"Is there {'an' if w[0] in 'aeiou' else 'a'} {w} in the picture?"

    def phrase(self, attribute: str) -> str:
        """The word itself (its most frequent surface form)."""
        return self.surface(attribute)

    def parts(self, attribute: str) -> frozenset[str]:
        """A word is its own only part."""
        return frozenset({attribute})


# ----------------------------------------------------------------------------- evidence
class CandidateEvidence:
    """Attributes of gallery items, from their texts (captions or a captioner's output).

    Args:
        vocabulary: Turns texts into attributes.
        texts_of: Item id -> its texts. Default: the captions of ``retriever.corpus`` when
            :class:`DialogAgent` is given a retriever that has one.
        cache_size: Items whose attributes are kept.
    """

    def __init__(
        self,
        vocabulary: AttributeVocabulary,
        texts_of: Callable[[str], Sequence[str]] | None = None,
        *,
        cache_size: int = 100_000,
    ) -> None:
        self.vocabulary = vocabulary
        self.texts_of = texts_of
        self.cache_size = cache_size
        self._cache: OrderedDict[str, dict[str, float]] = OrderedDict()

    def of(self, item_id: str) -> dict[str, float]:
        """Attribute -> share of the item's texts that mention it (empty when it has none)."""
        hit = self._cache.get(item_id)
        if hit is not None:
            return hit
        texts = list(self.texts_of(item_id)) if self.texts_of is not None else []
        counts: Counter[str] = Counter()
        for t in texts:
            counts.update(self.vocabulary.attributes(t))
        out = {a: n / len(texts) for a, n in counts.items()} if texts else {}
        self._cache[item_id] = out
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out


# ----------------------------------------------------------------------------- dialog facts
@dataclass
class DialogFacts:
    """What the caption and the answers established, as attributes."""

    given: set[str] = field(default_factory=set)
    confirmed: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)
    asked: set[str] = field(default_factory=set)
    questions: set[str] = field(default_factory=set)

    def known(self, vocabulary: AttributeVocabulary, attribute: str) -> bool:
        """Whether ``attribute`` was asked, given, or is implied by earlier answers."""
        if attribute in self.asked or attribute in self.given:
            return True
        parts = vocabulary.parts(attribute)
        for a in self.confirmed:
            if parts <= vocabulary.parts(a):
                return True
        for a in self.given:
            if parts <= vocabulary.parts(a):
                return True
        for a in self.denied:
            if vocabulary.parts(a) <= parts:
                return True
        return False


def _maximal(vocabulary: AttributeVocabulary, attrs: Sequence[str]) -> list[str]:
    """Attributes not implied by a more specific one of the same list (order kept)."""
    parts = {a: vocabulary.parts(a) for a in attrs}
    return [a for a in attrs if not any(b != a and parts[a] < parts[b] for b in attrs)]


def dialog_facts(
    vocabulary: AttributeVocabulary, caption: str, turns: Sequence[DialogTurn]
) -> DialogFacts:
    """Read the caption and the question/answer rounds into :class:`DialogFacts`.

    A yes answer confirms the question's attributes; a no answer denies the question's
    most specific attributes; a free-form answer ("a red circle") confirms the answer's
    attributes; "I don't know" only marks the question as asked.
    """
    facts = DialogFacts(given=set(vocabulary.attributes(caption)))
    for t in turns:
        facts.questions.add(t.question.strip().lower())
        q_attrs = sorted(vocabulary.attributes(t.question))
        facts.asked.update(_maximal(vocabulary, q_attrs))
        kind = answer_kind(t.answer)
        if kind == YES:
            extra = sorted(vocabulary.attributes(t.answer))
            facts.confirmed.extend(a for a in q_attrs + extra if a not in facts.confirmed)
        elif kind == NO:
            for a in _maximal(vocabulary, q_attrs):
                if a not in facts.denied:
                    facts.denied.append(a)
        elif kind == OTHER:
            for a in sorted(vocabulary.attributes(t.answer)):
                if a not in facts.confirmed:
                    facts.confirmed.append(a)
    return facts


# ----------------------------------------------------------------------------- reformulation
class Reformulator(Protocol):
    """Caption + dialog -> one caption-like query text."""

    def __call__(self, caption: str, turns: Sequence[DialogTurn]) -> str: ...


class RuleReformulator:
    """The caption plus the confirmed attributes as caption fragments, no LLM.

    ``"a dog on grass"`` + (``Is there a ball?``, ``yes``) + (``Is anything red?``, ``no``)
    -> ``"a dog on grass with a ball"``: question text is never pasted, "I don't know" adds
    nothing and denied attributes stay out of the query (the agent penalises them).
    """

    def __init__(self, vocabulary: AttributeVocabulary, *, joiner: str = " with ") -> None:
        self.vocabulary = vocabulary
        self.joiner = joiner
        self.name = "rules"

    def __call__(self, caption: str, turns: Sequence[DialogTurn]) -> str:
        facts = dialog_facts(self.vocabulary, caption, turns)
        voc = self.vocabulary
        given = [voc.parts(g) for g in facts.given]
        new = [a for a in facts.confirmed if not any(voc.parts(a) <= g for g in given)]
        new = _maximal(voc, new)
        if not new:
            return caption
        caption = caption.rstrip(" .")
        fragments = [self.vocabulary.phrase(a) for a in new]
        tail = fragments[-1]
        if len(fragments) > 1:
            tail = ", ".join(fragments[:-1]) + " and " + tail
        return f"{caption}{self.joiner}{tail}"


class LLMReformulator:
    """An LLM writes the caption-like query from the caption and the informative answers.

    Only answered rounds go to the LLM, as facts ("yes: a dog", "no: anything red"); "I
    don't know" rounds are dropped. An unusable answer falls back to :class:`RuleReformulator`
    (counted in ``cost()["fallbacks"]``).
    """

    def __init__(
        self,
        llm: ChatLLM,
        vocabulary: AttributeVocabulary,
        *,
        prompt: PromptTemplate = DIALOG_SUMMARY,
    ) -> None:
        self.llm = llm if isinstance(llm, CachedLLM) else CachedLLM(llm)
        self.vocabulary = vocabulary
        self.prompt = prompt
        self.rules = RuleReformulator(vocabulary)
        self.fallbacks = 0
        self.name = f"llm:{self.llm.name}"

    def __call__(self, caption: str, turns: Sequence[DialogTurn]) -> str:
        informative = [t for t in turns if answer_kind(t.answer) != UNKNOWN]
        if not informative:
            return caption
        facts = dialog_facts(self.vocabulary, caption, informative)
        lines = [f"- it shows {self.vocabulary.phrase(a)}" for a in facts.confirmed]
        lines += [f"- it does not show {self.vocabulary.phrase(a)}" for a in facts.denied]
        if not facts.confirmed:
            return caption
        answer = self.llm.complete(
            self.prompt.messages(caption=sanitize(caption), dialog="\n".join(lines))
        )
        text = parse_field(answer, "Description")
        if not text or any(t.question.strip().lower() in text.lower() for t in turns):
            self.fallbacks += 1
            logger.warning("reformulation unusable (%r); using the rule-based query", answer[:80])
            return self.rules(caption, turns)
        denied = {self.vocabulary.phrase(a).lower() for a in facts.denied}
        if any(d and d in text.lower() for d in denied):
            self.fallbacks += 1
            return self.rules(caption, turns)
        return text

    def cost(self) -> dict[str, float]:
        """LLM cost and the number of rule-based fallbacks."""
        return {**self.llm.cost(), "reformulation_fallbacks": float(self.fallbacks)}


class ConcatReformulator:
    """ChatIR's concatenation (caption and every question/answer round), the baseline."""

    name = "concat"

    def __call__(self, caption: str, turns: Sequence[DialogTurn]) -> str:
        return Query(text=caption, dialog=tuple(turns)).as_text()


# ----------------------------------------------------------------------------- ranking
@dataclass
class Ranking:
    """The agent's ranking after a round: candidate ids best first, with their scores."""

    ids: list[str]
    scores: np.ndarray
    query: str
    facts: DialogFacts
    hits: dict[str, Hit] = field(default_factory=dict)

    def rank_of(self, item_id: str) -> int | None:
        """0-based rank of ``item_id`` or None when it is not among the candidates."""
        try:
            return self.ids.index(item_id)
        except ValueError:
            return None


class Questioner(Protocol):
    """Chooses the next question from the current ranking."""

    def __call__(
        self, caption: str, turns: Sequence[DialogTurn], ranking: Ranking
    ) -> str | None: ...


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-12, 1 - 1e-12)
    out: np.ndarray = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    return out


class CandidateQuestioner:
    """The LLM-free questioner: the attribute whose answer splits the top candidates best.

    The weights of the top ``k`` candidates are a softmax of their combined scores at
    ``temperature``; an attribute's chance of a "yes" is the weighted share of candidates
    whose evidence mentions it, and its expected information gain is the binary entropy of
    that chance. Attributes that are known (asked, given, implied) are skipped, and so are
    attributes that fewer than ``min_support`` candidates mention.

    Args:
        evidence: The candidates' attributes.
        k: Top candidates considered.
        temperature: Softmax temperature over the combined (z-normalised) scores.
        min_support: Fewest top-k candidates that must mention an attribute.
        groups: Kinds of thing whose other members are not asked about once one member is
            named (:data:`WORD_GROUPS`; words the vocabulary does not produce are inert).
    """

    name = "candidate-ig"

    def __init__(
        self,
        evidence: CandidateEvidence,
        *,
        k: int = 50,
        temperature: float = 1.0,
        min_support: int = 1,
        groups: Sequence[frozenset[str]] = (),
    ) -> None:
        if k < 2:
            raise ValueError(f"k must be at least 2 candidates, got {k}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.evidence = evidence
        self.vocabulary = evidence.vocabulary
        self.k = k
        self.temperature = temperature
        self.min_support = min_support
        self.groups = tuple(groups)

    def options(
        self, caption: str, turns: Sequence[DialogTurn], ranking: Ranking, n: int = 10
    ) -> list[tuple[str, float]]:
        """Up to ``n`` unknown attributes with their expected information gain, best first."""
        ids = ranking.ids[: self.k]
        if len(ids) < 2:
            return []
        s = np.asarray(ranking.scores[: len(ids)], dtype=np.float64) / self.temperature
        w = np.exp(s - s.max())
        w /= w.sum()
        facts = ranking.facts
        exact = bool(getattr(self.vocabulary, "exact", False))
        index: dict[str, int] = {}
        rows: list[list[tuple[int, float]]] = []
        for i in ids:
            row = []
            for a, share in self.evidence.of(i).items():
                j = index.setdefault(a, len(index))
                row.append((j, 1.0 if exact or share >= 1.0 else float(share)))
            rows.append(row)
        if not index:
            return []
        like = np.zeros((len(ids), len(index)))
        for r, row in enumerate(rows):
            for j, v in row:
                like[r, j] = v
        names = list(index)
        support = (like > 0).sum(axis=0)
        keep = [
            j
            for j, a in enumerate(names)
            if support[j] >= self.min_support
            and not facts.known(self.vocabulary, a)
            and self.vocabulary.question(a).lower() not in facts.questions
        ]
        named = set(facts.given) | set(facts.confirmed)
        covered = {h for h, members in HYPERNYMS.items() if named & members}
        filled = [g for g in self.groups if named & g]
        keep = [
            j for j in keep if names[j] not in covered and not any(names[j] in g for g in filled)
        ]
        if not keep:
            return []
        sub = like[:, keep]
        # mutual information between the answer (yes / not yes) and which candidate it is
        p_yes = w @ sub
        gains = _binary_entropy(p_yes) - w @ _binary_entropy(sub)
        cands = [names[j] for j in keep]
        order = sorted(range(len(cands)), key=lambda j: (-round(float(gains[j]), 9), cands[j]))
        return [(cands[j], float(gains[j])) for j in order[:n]]

    def __call__(self, caption: str, turns: Sequence[DialogTurn], ranking: Ranking) -> str | None:
        """The question about the best-splitting attribute (None when nothing splits)."""
        best = self.options(caption, turns, ranking, n=1)
        if not best or best[0][1] <= 1e-6:
            return None
        return self.vocabulary.question(best[0][0])


CANDIDATE_QUESTION = PromptTemplate(
    name="candidate-question",
    system=(
        "You help someone find one image among many. You see the captions of the best "
        "matching images so far and questions that would tell them apart. Choose the one "
        'question that splits these images best. Answer with one line that starts with "Question:".'
    ),
    user=(
        "The person is looking for: {caption}\nTop images:\n{candidates}\n"
        "Already asked:\n{dialog}\nQuestions to choose from:\n{options}\nQuestion:"
    ),
)


class LLMCandidateQuestioner:
    """An LLM picks and phrases the next question from the same candidate evidence.

    The prompt shows the captions of the top candidates and the best-splitting questions of
    :class:`CandidateQuestioner`; the LLM's question is used when it asks about an unknown
    attribute the candidates mention, otherwise the top option is asked (counted in
    ``cost()["question_fallbacks"]``).
    """

    name = "candidate-llm"

    def __init__(
        self,
        llm: ChatLLM,
        base: CandidateQuestioner,
        *,
        prompt: PromptTemplate = CANDIDATE_QUESTION,
        show: int = 5,
        n_options: int = 5,
    ) -> None:
        self.llm = llm if isinstance(llm, CachedLLM) else CachedLLM(llm)
        self.base = base
        self.prompt = prompt
        self.show = show
        self.n_options = n_options
        self.fallbacks = 0

    def __call__(self, caption: str, turns: Sequence[DialogTurn], ranking: Ranking) -> str | None:
        options = self.base.options(caption, turns, ranking, n=self.n_options)
        options = [(a, g) for a, g in options if g > 1e-6]
        if not options:
            return None
        voc = self.base.vocabulary
        texts = self.base.evidence.texts_of
        lines = []
        for i in ranking.ids[: self.show]:
            cap = (list(texts(i)) or [""])[0] if texts is not None else ""
            lines.append(f"- {sanitize(cap, max_chars=200)}")
        questions = [voc.question(a) for a, _ in options]
        dialog = "\n".join(f"- {t.question} {t.answer}" for t in turns) or "(none yet)"
        answer = self.llm.complete(
            self.prompt.messages(
                caption=sanitize(caption),
                candidates="\n".join(lines),
                dialog=sanitize(dialog),
                options="\n".join(f"- {q}" for q in questions),
            )
        )
        question = parse_field(answer, "Question")
        if question and question.strip().endswith("?"):
            allowed = {a for a, _ in options}
            if voc.attributes(question) & allowed:
                return question.strip()
        self.fallbacks += 1
        return questions[0]

    def cost(self) -> dict[str, float]:
        """LLM cost and the number of fallbacks to the top option."""
        return {**self.llm.cost(), "question_fallbacks": float(self.fallbacks)}


# ----------------------------------------------------------------------------- the agent
def _corpus_of(retriever: Any) -> Any:
    # A pipeline serves its first stage's corpus.
    corpus = getattr(retriever, "corpus", None)
    if corpus is None:
        corpus = getattr(getattr(retriever, "retriever", None), "corpus", None)
    return corpus


def _corpus_texts(retriever: Any) -> Callable[[str], Sequence[str]] | None:
    corpus = _corpus_of(retriever)
    if corpus is None:
        return None

    def texts(item_id: str) -> Sequence[str]:
        item = corpus.get(item_id)
        return tuple(item.captions) if item is not None else ()

    return texts


def captioned_texts(
    captioner: Any, retriever: Any, *, n: int = 5
) -> Callable[[str], Sequence[str]]:
    """Item id -> texts for :class:`CandidateEvidence`: the item's captions where it has
    some, otherwise a captioner's descriptions of its image.

    A photo folder indexed without captions leaves the agent no evidence to ask from; with
    a captioner (``describe(images, n)`` returning ``n`` descriptions per image, as
    :class:`~vistrieve.query_rewriting.captioner.RetrievalCaptioner` does, or
    ``caption(images)`` for one) the candidates' descriptions stand in for captions. Each
    image is described once per :class:`CandidateEvidence` cache entry.

    Args:
        captioner: Describes images.
        retriever: A retriever (or pipeline) with a ``corpus``.
        n: Descriptions per image.

    Raises:
        ValueError: the retriever has no corpus.
    """
    corpus = _corpus_of(retriever)
    if corpus is None:
        raise ValueError(f"{type(retriever).__name__} has no corpus to describe")

    def texts(item_id: str) -> Sequence[str]:
        item = corpus.get(item_id)
        if item is None:
            return ()
        if item.captions:
            return tuple(item.captions)
        if item.image is None:
            return ()
        if hasattr(captioner, "describe"):
            return tuple(captioner.describe([item.image], n=n)[0])
        return tuple(captioner.caption([item.image]))

    return texts


@dataclass
class AgentReply:
    """One turn of the agent: the top hits, the next question and the query searched."""

    hits: list[Hit]
    question: str | None
    query: str
    ranking: Ranking


class DialogAgent:
    """Ranks with every round's query and the answers, and asks the next question.

    Args:
        retriever: Text -> image retriever (a pipeline works).
        vocabulary: What attributes are (default :class:`CaptionWords`).
        evidence: The candidates' attributes (default: from the retriever's corpus captions).
        questioner: Chooses the next question (default :class:`CandidateQuestioner`).
        reformulator: Writes each round's query (default :class:`RuleReformulator`).
        pool: Candidates retrieved per round's query.
        accumulate: Average every round's normalised scores (False: the last round only).
        confirm_weight: Bonus for each confirmed attribute a candidate's evidence mentions.
        deny_weight: Penalty for each denied attribute a candidate's evidence mentions.
        cache_size: Query texts whose retrieval results are kept (0: none, for an index
            that changes while the agent serves it).
    """

    def __init__(
        self,
        retriever: Retriever,
        *,
        vocabulary: AttributeVocabulary | None = None,
        evidence: CandidateEvidence | None = None,
        questioner: Questioner | None = None,
        reformulator: Reformulator | None = None,
        pool: int = 200,
        accumulate: bool = True,
        confirm_weight: float = 1.0,
        deny_weight: float = 1.0,
        cache_size: int = 512,
    ) -> None:
        if pool < 2:
            raise ValueError(f"pool must be at least 2 candidates, got {pool}")
        self.retriever = retriever
        if evidence is None:
            evidence = CandidateEvidence(vocabulary or CaptionWords(), _corpus_texts(retriever))
        self.evidence = evidence
        self.vocabulary = vocabulary or evidence.vocabulary
        self.questioner: Questioner = questioner or CandidateQuestioner(evidence)
        self.reformulator: Reformulator = reformulator or RuleReformulator(self.vocabulary)
        self.pool = pool
        self.accumulate = accumulate
        self.confirm_weight = confirm_weight
        self.deny_weight = deny_weight
        self.cache_size = cache_size
        self._cache: OrderedDict[str, list[Hit]] = OrderedDict()

    def _search(self, texts: Sequence[str]) -> list[list[Hit]]:
        if self.cache_size <= 0:
            unique = list(dict.fromkeys(texts))
            found = self.retriever.retrieve([Query(text=t) for t in unique], k=self.pool)
            by_text = dict(zip(unique, found, strict=True))
            return [by_text[t] for t in texts]
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            found = self.retriever.retrieve([Query(text=t) for t in todo], k=self.pool)
            for t, hits in zip(todo, found, strict=True):
                self._cache[t] = hits
        out = []
        for t in texts:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def queries(self, caption: str, turns: Sequence[DialogTurn]) -> list[str]:
        """The query of every round 0..len(turns) (round 0 is the caption)."""
        return [caption] + [self.reformulator(caption, turns[:r]) for r in range(1, len(turns) + 1)]

    def rank(self, caption: str, turns: Sequence[DialogTurn] = ()) -> Ranking:
        """The combined ranking after the given rounds."""
        caption = caption.strip()
        if not caption:
            raise ValueError("empty caption: describe the image you are looking for")
        texts = self.queries(caption, turns)
        used = texts if self.accumulate else texts[-1:]
        rows = self._search(used)
        hits: dict[str, Hit] = {}
        for row in rows:
            for h in row:
                hits.setdefault(h.id, h)
        ids = list(hits)
        col = {i: j for j, i in enumerate(ids)}
        total = np.zeros(len(ids))
        for row in rows:
            if not row:
                continue
            s = np.array([h.score for h in row], dtype=np.float64)
            sd = float(s.std()) or 1.0
            z = (s - s.mean()) / sd
            zr = np.full(len(ids), float(z.min()) - 1.0 / max(len(row), 1))
            for h, v in zip(row, z, strict=True):
                zr[col[h.id]] = v
            total += zr
        total /= max(len(rows), 1)
        facts = dialog_facts(self.vocabulary, caption, turns)
        if facts.confirmed or facts.denied:
            for j, i in enumerate(ids):
                ev = self.evidence.of(i)
                if not ev:
                    continue
                total[j] += self.confirm_weight * sum(1.0 for a in facts.confirmed if a in ev)
                total[j] -= self.deny_weight * sum(1.0 for a in facts.denied if a in ev)
        order = np.argsort(-total, kind="stable")
        return Ranking(
            ids=[ids[j] for j in order],
            scores=total[order],
            query=texts[-1],
            facts=facts,
            hits=hits,
        )

    def step(self, caption: str, turns: Sequence[DialogTurn] = (), k: int = 10) -> AgentReply:
        """Rank, then choose the next question; returns the top ``k`` hits."""
        ranking = self.rank(caption, turns)
        question = self.questioner(caption, turns, ranking)
        hits = []
        for i, s in zip(ranking.ids[:k], ranking.scores[:k], strict=False):
            hits.append(ranking.hits[i].with_stage("dialog", float(s)))
        return AgentReply(hits=hits, question=question, query=ranking.query, ranking=ranking)

    def cost(self) -> dict[str, float]:
        """The LLM cost of the questioner and reformulator (empty without LLMs)."""
        out: dict[str, float] = {}
        for part in (self.questioner, self.reformulator):
            fn = getattr(part, "cost", None)
            if callable(fn):
                for key, value in fn().items():
                    out[key] = out.get(key, 0.0) + value
        return out


def binary_entropy(p: float) -> float:
    """Entropy in bits of a yes/no answer that is "yes" with probability ``p``."""
    if p <= 0 or p >= 1:
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


__all__ = [
    "AgentReply",
    "AttributeVocabulary",
    "CANDIDATE_QUESTION",
    "HYPERNYMS",
    "WORD_GROUPS",
    "CandidateEvidence",
    "CandidateQuestioner",
    "CaptionWords",
    "ConcatReformulator",
    "DialogAgent",
    "DialogFacts",
    "LLMCandidateQuestioner",
    "LLMReformulator",
    "Ranking",
    "RuleReformulator",
    "answer_kind",
    "binary_entropy",
    "canonical_word",
    "captioned_texts",
    "content_words",
    "dialog_facts",
]
