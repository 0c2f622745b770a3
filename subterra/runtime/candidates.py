"""The copy constraint on text: which spans of a user's message a slot value may be copied from,
and whether a value fits its slot's declared type.

A free slot's value is a verbatim span of the user's last message (whole words), never retyped,
so it can be chosen but never misspelt; an enum or boolean slot chooses among its declared values
instead (``CHOSEN_TYPES``). ``Codec.value_candidates`` (``subterra.runtime.encoding``) turns what
this module allows into token sequences.
"""

from __future__ import annotations

import functools
import os
import re

from subterra.typed_values import written_date

WORD = re.compile(r"\w")
TOKEN = re.compile(r"[^\s]+")  # a word of a message as written, punctuation attached
SENTENCE_BREAK = ",.;:!?"  # a word ending in one of these ends a value
CHOSEN_TYPES = ("enum", "boolean")  # slot types chosen among declared values, never copied from the message

# greetings, thanks and fillers: words no slot value is made of only (an English list, not one
# workflow's words: "hi" is never a destination, "good morning" never a name)
COURTESY_WORDS = frozenset("""
hi hello hey hiya howdy heya yo hallo greetings morning afternoon evening good day there
thanks thank thx ty cheers please pls plz ok okay k yes yeah yep no nope sure um uh hmm er
well so oh ah right alright great cool fine lovely hm huh sorry excuse me you all folks
hope hoping how doing
""".split())


@functools.lru_cache(maxsize=1 << 16)
def courtesy_only(span: str) -> bool:
    """Is ``span`` made only of greetings, thanks and fillers (so never a slot value)?"""
    found = re.findall(r"[a-z]+", span.casefold())
    return bool(found) and all(w in COURTESY_WORDS for w in found) and not re.search(r"\d", span)


@functools.lru_cache(maxsize=1 << 16)  # every row of a batch asks of the same spans
def fits_type(spec, value: str) -> bool:
    """Can ``value`` be a value of the slot ``spec`` by its declared type (and range)? Integer,
    number and date slots take only what reads as one, inside the declared range; a string slot
    takes what is shaped as its declared values are: no bare number nor id ("FM3K8B") where none
    has a digit, a digit where every one has one (a booking reference is never "Eze"), no date
    where none is one, no number among the words of a pool of words (a city is never "6
    September", a device may be "Logitech C920") nor a day's name alone ("july", "tomorrow";
    unless a declared value is one), an e-mail address where every one is one and none where none
    is (a phone number is never "h.jennings@talk21.com"); a slot with no declared values takes
    anything."""
    import datetime as dt

    if spec.type == "integer" or spec.type == "number":
        try:
            number = int(value) if spec.type == "integer" else float(value)
        except ValueError:
            return False
        low, high = spec.min, spec.max
        return (low is None or number >= float(low)) and (high is None or number <= float(high))
    if spec.type == "date":  # a day inside the declared range ("next friday" in December is no 2027 flight), in the
        try:  # form's own way of writing one: "1986-04-22" as written is none, the parser offers it as "22 April 1986"
            day = dt.datetime.strptime(value, "%d %B %Y").date()
        except ValueError:
            return False
        low, high = (dt.date.fromisoformat(str(b)) if b is not None else None for b in (spec.min, spec.max))
        return (low is None or day >= low) and (high is None or day <= high)
    if not spec.values:
        return True
    declared = [str(v) for v in spec.values]
    addresses = {"@" in v for v in declared}
    if len(addresses) == 1 and ("@" in value) not in addresses:
        return False  # an address where every declared value is one, none where none is
    if all(any(ch.isdigit() for ch in v) for v in declared) and not any(ch.isdigit() for ch in value):
        return False  # ids, phone numbers: a value without a digit is not one
    if written_date(value) and not any(written_date(v) for v in declared):
        return False  # a date where no declared value is one ("27 September 1983" is no postcode)
    if not any(ch.isdigit() for v in declared for ch in v):  # no bare number where no declared value has a digit
        if re.fullmatch(r"[\d\s.,:/-]+", value):
            return False
    if all(_WORDS.fullmatch(v) for v in declared):  # a pool of words (names, cities): an id is not one, nor
        return not re.fullmatch(r"(?=\S*\d)(?=\S*[^\W\d])\S+", value) and not _NUMBER_WORD.search(value) \
            and (not _CALENDAR.fullmatch(value) or any(_CALENDAR.fullmatch(v) for v in declared))  # "6 September", "july"
    return True


_NUMBER_WORD = re.compile(r"(?<!\S)\d+(?:st|nd|rd|th)?(?![^\s,.!?])")  # a word that is a number ("2 tickets Chicago")
_CALENDAR = re.compile(  # a day said by its name alone: no city nor name ("flights to athens in july")
    r"(?:(?:in|on|of|next|this|last)\s+)?(?:january|february|march|april|june|july|august|september|october|november|december"
    r"|(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)s?|today|tonight|tomorrow|yesterday)", re.I)
_WORDS = re.compile(r"[^\W\d_]+(?:[\s'’.-]+[^\W\d_]+)*\.?")


def value_spans(message: str, lexicon: frozenset[str] = frozenset(), runs_only: bool = True) -> list[str]:
    """The spans of ``message`` a slot value may be copied from.

    Without a lexicon: every span of whole words (``word_spans``). With the compile's lexicon of
    procedure words (words users said around values in training, never inside one): a span
    neither starts nor ends with a procedure word, and with ``runs_only`` it is a whole run of
    non-procedure words between procedure words and sentence breaks, so where a value ends is
    read from the message ("Cape Town", never "Cape"). If the lexicon leaves nothing, every span.
    """
    if lexicon and runs_only:
        runs = _runs(message, lexicon)
        if runs:
            return runs
    spans = word_spans(message)
    if not lexicon:
        return spans
    kept = [s for s in spans if not _edge_words(s) & lexicon]
    return kept or spans


def value_runs(message: str, lexicon: frozenset[str]) -> list[str]:
    """The runs of non-procedure words of ``message`` (none without a lexicon)."""
    return _runs(message, lexicon) if lexicon else []


def shaped_like(spec, value: str) -> bool:
    """Does ``value`` look like one of the slot's declared values: with digits (an id, a phone
    number) or an ``@`` as some of them have, without as some of them are, and no more words than
    the longest of them plus one? A slot with no declared values takes any value."""
    declared = [str(v) for v in spec.values or ()]
    if not declared:
        return True
    for mark in (str.isdigit, "@".__eq__):
        has = any(mark(ch) for ch in value)
        if not any(any(mark(ch) for ch in v) == has for v in declared):
            return False
    return len(value.split()) <= max(len(v.split()) for v in declared) + 1


def is_code(text: str) -> bool:
    """Has ``text`` a digit or an ``@`` (an SMS code, an e-mail address, an order number)?"""
    return any(ch.isdigit() or ch == "@" for ch in text)


def coded(spec) -> bool:
    """Are all the slot's declared values codes (``is_code``), none a plain word? No declared
    values: no."""
    declared = [str(v) for v in spec.values or ()]
    return bool(declared) and all(is_code(v) for v in declared)


def code_shaped(spec, span: str) -> bool:
    """Is ``span`` a code as the slot's declared codes are (``coded``): it has a digit or an ``@``,
    no more words without one than a declared value has, and the kinds of character (letters, digits,
    ``@``) every declared code has or none has, and the letters all of them start with ("650117",
    "EC1V 4PW", "ORD-9162034"; never "final answer 650117", "INV-853406 in", "EC1V 4PW" for an SMS
    code of digits, "8" for a postcode, nor "WH-1000XM5" for an order number "ORD-...")?"""
    declared = [str(v) for v in spec.values]
    plain = max(sum(not is_code(w) for w in v.split()) for v in declared)
    for mark in (str.isalpha, str.isdigit, "@".__eq__):  # a kind of character every code has, or none has
        has = [any(mark(ch) for ch in v) for v in declared]
        if all(has) != any(has):
            continue
        if any(mark(ch) for ch in span) != all(has):
            return False
    prefix = os.path.commonprefix([v.upper() for v in declared])
    prefix = prefix[:next((i for i, ch in enumerate(prefix) if ch.isdigit()), len(prefix))]
    if any(ch.isalpha() for ch in prefix) and not span.upper().startswith(prefix):
        return False  # "ORD-9162034" has the order numbers' "ORD-"; "WH-1000XM5" has not
    return is_code(span) and sum(not is_code(w) for w in span.split()) <= plain


def code_spans(message: str) -> list[str]:
    """The runs of consecutive words of ``message`` that are codes (``is_code``; "650117" of "final
    answer 650117", "EC1V 4PW" of "pc EC1V 4PW"), never across a sentence break, punctuation
    at their ends dropped."""
    found: list[str] = []
    run: list[tuple[int, int]] = []
    for m in list(TOKEN.finditer(message)) + [None]:
        code = m is not None and is_code(m.group())
        if run and (not code or message[run[-1][1] - 1] in SENTENCE_BREAK):
            text = _span_text(message, run[0][0], run[-1][1])
            if text and is_code(text) and text not in found:
                found.append(text)
            run = []
        if code:
            run.append((m.start(), m.end()))
    return found


def _runs(message: str, lexicon: frozenset[str]) -> list[str]:
    from subterra.lexicon import words

    runs: list[str] = []
    current: list[tuple[int, int]] = []

    def close():
        if current:
            text = _span_text(message, current[0][0], current[-1][1])
            if text and text not in runs:
                runs.append(text)
            current.clear()

    for m in TOKEN.finditer(message):
        found = words(m.group())
        if found and all(w in lexicon for w in found):
            close()
            continue
        if m.group()[0] in "([" or not m.group().strip(_DASHES):  # an aside starts: "barcelona (BCN)", "Mei Lin
            close()  # Zhou - i cant sign in" are two runs
            if not m.group().strip(_DASHES):
                continue
        current.append((m.start(), m.end()))
        if m.group()[-1] in SENTENCE_BREAK or m.group()[-1] in ")]":
            close()
    close()
    return runs


_DASHES = "-–—"  # a dash standing between words ("Hello - William Ashford") belongs to no value


def _span_text(message: str, start: int, end: int) -> str:
    """The text of a span without the punctuation and dashes at its ends (not part of a value); empty if it
    holds no word or a character a form's JSON string would have to escape."""
    text = message[start:end].strip(".,!?;:()[]'").strip(_DASHES + " ").strip(".,!?;:()[]'")
    return text if text and WORD.search(text) and '"' not in text and "\\" not in text else ""


def _edge_words(span: str) -> set[str]:
    from subterra.lexicon import words

    found = words(span)
    return {found[0], found[-1]} if found else set()


def word_spans(message: str, max_words: int = 6) -> list[str]:
    """Every span of 1..max_words whole words of ``message``; a span never crosses a sentence
    break (a word ending in , . ; : ! ?, a dash standing alone) and drops the punctuation at its ends."""
    words = [(m.start(), m.end()) for m in TOKEN.finditer(message)]
    spans: list[str] = []
    for i in range(len(words)):
        for j in range(i, min(len(words), i + max_words)):
            if j > i and (message[words[j - 1][1] - 1] in SENTENCE_BREAK + ")]" or message[words[j][0]] in "(["
                          or not message[words[j][0]:words[j][1]].strip(_DASHES)):  # a dash between words
                break
            text = _span_text(message, words[i][0], words[j][1])
            if text and text not in spans:
                spans.append(text)
    return spans


GREETING_TIMES = re.compile(r"\bgood\s+(?:morning|afternoon|evening|day|night)\b", re.I)  # a greeting, not a time of day


@functools.lru_cache(maxsize=1 << 16)
def named_choices(values: tuple[str, ...], message: str) -> tuple[str, ...]:
    """The declared values of an enum slot that ``message`` names as whole words, in any case,
    a hyphen read as a space and a plural ``s`` allowed ("two oat lattes", "semi skimmed");
    a value inside a longer named one is not named by it ("chai latte" names no "latte"), and a
    greeting names no time of day ("good morning")."""
    text = GREETING_TIMES.sub(" ", message.casefold().replace("-", " "))
    found: list[tuple[int, int, str]] = []
    for value in values:
        words = str(value).casefold().replace("-", " ").split()
        if not words:
            continue
        pattern = r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?:s|es)?(?!\w)"
        found += [(m.start(), m.end(), value) for m in re.finditer(pattern, text)]
    alone = {v for s, e, v in found if not any(s2 <= s and e <= e2 and e2 - s2 > e - s for s2, e2, _ in found)}
    return tuple(v for v in values if v in alone)


def said_values(values, message: str) -> list[str]:
    """The spans of ``message`` that say one of a slot's declared values word for word, in any
    case ("I'll be there in 10 minutes" says "in 10 minutes", frame words and all), longest first."""
    return list(_said_values(tuple(str(v) for v in values or ()), message))


@functools.lru_cache(maxsize=1 << 14)  # asked per slot and per rule of a turn, for every row of a batch
def _said_values(values: tuple[str, ...], message: str) -> tuple[str, ...]:
    found: dict[str, None] = {}
    for value in sorted(values, key=len, reverse=True):
        words = value.split()
        if words:
            pattern = r"(?<!\w)" + r"[\s-]+".join(map(re.escape, words)) + r"(?!\w)"
            found.update(dict.fromkeys(m.group(0) for m in re.finditer(pattern, message, re.I)))
    return tuple(found)


@functools.lru_cache(maxsize=256)
def words_apart(values: tuple[str, ...]) -> bool:
    """Do the declared values share no word (cities, people's names)? Where they do ("MacBook Air",
    "MacBook Pro"; "Mill Road", "Park Lane"), a value said with more words may be a longer one of
    the kind ("macbook pro 2021", "iPad mini")."""
    from subterra.lexicon import words

    seen: set[str] = set()
    for value in values:
        own = set(words(str(value)))
        if own & seen:
            return False
        seen |= own
    return True


def declared_whole(spans: list[str], said: list[str], message: str, said_any: list[str] = ()) -> list[str]:
    """Of ``spans``, those left when ``message`` says declared values of the slot (``said``, from
    ``said_values``, of a slot whose values share no word: ``words_apart``): no span holding one of
    them and more words ("Paris CDG", "dublin ireland": the value is "Paris", "dublin"), and no aside
    in brackets that is none of them ("barcelona (BCN)"); and, of any slot's declared values said
    (``said_any``), no part of one ("Mexico" of "Mexico City", "Town" of "Cape Town")."""
    parts = [a.casefold() for a in said_any if len(a.split()) > 1]
    if parts:
        spans = [s for s in spans if not any(s.casefold() != a and re.search(r"(?<!\w)" + re.escape(s.casefold()) + r"(?!\w)", a)
                                            for a in parts)]
    if not said:
        return spans
    folded = [s.casefold() for s in said]

    def holds_more(span: str) -> bool:
        text = span.casefold()
        return text not in folded and any(re.search(r"(?<!\w)" + re.escape(s) + r"(?!\w)", text) for s in folded)

    def aside(span: str) -> bool:
        return span.casefold() not in folded and bool(re.search(r"[(\[]\s*" + re.escape(span), message))

    return [s for s in spans if not holds_more(s) and not aside(s)]


def capitalised_values(spec) -> bool:
    """Are the slot's declared values proper names, capitalised ("Marisol Vega", "Lotte de Vries")?"""
    declared = [str(v) for v in spec.values or ()]
    return bool(declared) and all(is_capitalised(v) for v in declared)


def is_capitalised(text: str) -> bool:
    """Are the first and last word of ``text`` capitalised ("Lotte de Vries")?"""
    found = re.findall(r"[^\W\d_]+", text)
    return bool(found) and found[0][:1].isupper() and found[-1][:1].isupper()


def written_as_names(message: str, spans: list[str], cased: bool = False) -> list[str]:
    """Of ``spans``, the ones a message that writes a name capitalised means: when some span is
    capitalised where a sentence does not start ("booking for my mother, Marisol Vega"), or with
    ``cased`` when the message itself starts with a capital ("Sorry, lost you there."), the spans
    written in lower case are left out ("mother", "lost"); a message in lower case throughout keeps
    them all ("warsaw")."""
    if not (cased and written_in_case(message)) and not any(is_capitalised(s) and mid_sentence(message, s) for s in spans):
        return spans
    return [s for s in spans if is_capitalised(s) or any(ch.isdigit() for ch in s)]


def written_in_case(message: str) -> bool:
    """Does ``message`` start with a capital, other than the word "I" ("Sorry, lost you there.")?"""
    first = re.search(r"[^\W\d_]+", message)
    return bool(first) and first.group()[0].isupper() and first.group() != "I"


def mid_sentence(message: str, span: str) -> bool:
    """Is the capital of ``span`` its own: does it stand in ``message`` where no sentence starts, or is
    a later word of it capitalised too ("morning. Tobias Krüger. need help": "Krüger" starts no sentence)?"""
    at = message.find(span)
    before = message[:at].rstrip()
    later = re.findall(r"[^\W\d_]+", span)[1:]
    return at >= 0 and (at > 0 and bool(before) and before[-1] not in ".!?" or bool(later) and later[-1][:1].isupper())
