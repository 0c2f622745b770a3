"""Values as people say them: numbers in words and dates in any common form, read by maintained
parsers and offered to the runtime in the slot's canonical form.

The compiled model copies values from the user's message; a value people write their own way
("two of us", "March 14th", "next Friday", "the 3rd of August") is no span of the canonical form
a slot holds (``2``, ``14 March 2027``). ``parsed_values`` reads the message with ``text2num``
(numbers written in words) and ``dateparser`` (dates, relative ones anchored to the conversation's
date), and returns the canonical values it finds; the runtime offers them beside the message's
spans, and the model chooses among them as among any candidates, so the form holds the
normalised value.
"""

from __future__ import annotations

import datetime as dt
import functools
import re

from subterra.slot_values import format_date

# a party of one said without a number
_ALONE = re.compile(r"\b(just me|only me|(?:just|only) for me|me only|me alone|myself|by myself|on my own|alone|solo|just one|one person)\b", re.I)
# a party said as who comes ("me and a friend", "my wife and I", "2 adults and 3 kids")
_PERSON = (r"friend|wife|husband|partner|spouse|daughter|son|kid|child|baby|toddler|mum|mom|mother|dad|father|"
           r"brother|sister|colleague|coworker|boss|girlfriend|boyfriend|fianc[eé]e?|grandma|grandpa|"
           r"grandmother|grandfather|aunt|uncle|cousin|niece|nephew|buddy|mate|roommate|neighbou?r")
_A_COUPLE = re.compile(r"^\W*(?:(?:just|only|we're|we are|we'll be|it's|its)\s+)?(?:a|the)\s+couple(?:\s+of\s+us)?\W*$"
                       r"|\b(?:a|the)\s+couple\s+of\s+us\b", re.I)
_COMPANION = re.compile(rf"\b(?:my|a|an|our|one)\s+(?:\w+\s+)?(?:{_PERSON})\b", re.I)
_SPEAKER = re.compile(r"\b(?:me|myself|i|i'm|im)\b", re.I)
# people counted by kind ("2 adults", "3 passengers")
_PEOPLE_NOUN = (r"adults?|kids?|children|child|teens?|teenagers?|infants?|babies|people|persons?|passengers?|travell?ers?|"
                r"guests?|seniors?|students?")
_PEOPLE_COUNT = re.compile(rf"\b(\d+)\s+(?:{_PEOPLE_NOUN})\b", re.I)
_PEOPLE_AFTER = re.compile(rf"\s+(?:of\s+us\b|(?:{_PEOPLE_NOUN}|(?:{_PERSON})s?)\b)", re.I)  # what follows a count of people
_PEOPLE_WORDING = re.compile(r"\b(?:people|persons?|passengers?|travell?ers?|guests?|adults?|members?|attendees?|"
                             r"participants?|party|group|visitors?|patients?|customers?|users?|seats?|tickets?)\b", re.I)
_DAY_WORDS = re.compile(r"\b(today|tonight|tomorrow|monday|tuesday|wednesday|thursday|friday|saturday|sunday|"
                        r"mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun|week|weeks|weekend|fortnight|days?)\b", re.I)
# what dateparser reads wrong, said the way it reads right: "the day after tomorrow" is not
# tomorrow, "a week from today" is not a week ago
_RELATIVE = ((re.compile(r"\b(?:the\s+)?day\s+after\s+tomorrow\b", re.I), "in 2 days"),
             (re.compile(r"\b((?:a|an|one|two|three|four|five|six|\d+)\s+(?:days?|weeks?|fortnights?))\s+"
                         r"(?:from|after)\s+(?:today|now)\b", re.I), r"in \1"))
_MONTH_NAME = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?"
               r"|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b\.?")
_ORDINAL_DAY = r"(?:[12]\d|3[01]|0?[1-9])(?:st|nd|rd|th)?"
_WEEKDAY = r"(?:mon|tue|tues|wed|thu|thur|thurs|fri|sat|sun)[a-z]*,?\s+(?:the\s+)?"
_YEAR = r"(?:,?\s+\d{4})?"
_WRITTEN_DATE = re.compile(  # a day and a month name (a weekday, a year if said), or a numeric day/month(/year)
    rf"\b(?:{_WEEKDAY})?(?:{_ORDINAL_DAY}\s+(?:of\s+)?{_MONTH_NAME}{_YEAR}|{_MONTH_NAME}\s+{_ORDINAL_DAY}{_YEAR}"
    r"|\d{1,2}[/.-]\d{1,2}(?:[/.-]\d{2,4})?)\b(?![/.-]\d)", re.I)
_A_THING = re.compile(  # "book the one on 18 July", "the classic one", "light one, ...": no count; "just the one passenger" is one
    r"(?:(?<!just )\b(the|that|this|which|each|every|any|another|other|a good)(\s+[a-z]+)?"
    r"|^\W*()(?!(?:just|only|for|me|and|about|maybe|around|perhaps|exactly|make\s+it)\b)([a-z]+)) one\b"
    rf"(?!\s+(?:{_PEOPLE_NOUN}|tickets?|seats?)\b)", re.I)
_ONE_WAY = re.compile(r"\bone[\s-]+way\b", re.I)  # a ticket's kind, no count
# a number said with a unit of time ("3 hours flying", "one sec") counts that unit, not people or things
_TIME_UNIT = re.compile(r"\s*-?\s*(sec|second|min|minute|hr|hour|day|night|week|fortnight|month|year|yr)s?\b", re.I)
_ROUND_THE_CLOCK = re.compile(r"\b24\s*/\s*7\b(?![/.-]\d)")  # "down 24/7" is all the time, no 24 July
_NO_DAY = re.compile(r"\b(month|year)\b", re.I)  # "next month": no day in it
_DIGITS = re.compile(r"(?<![\d.,/:-])\d+(?![\d/:]|\.\d|(?:st|nd|rd|th)\b)")  # "2nd" is an ordinal, never a count


@functools.lru_cache(maxsize=1 << 14)
def parsed_values(slot_type: str, message: str, today: dt.date | None = None, low=None, high=None,
                  wording: str | None = None) -> tuple[str, ...]:
    """Canonical values of a slot of ``slot_type`` that ``message`` states in people's words; a
    date slot's range (``low``, ``high``) places a two-digit year in its century ("5/5/95", a date
    of birth, is 1995); an integer slot's ``wording`` (its description) says which units of time it
    counts (``counts``)."""
    if slot_type == "integer":
        return counts(message, wording)
    if slot_type == "date":
        return _dates(message, today, _day(low), _day(high))
    return ()


def written_date(text: str) -> bool:
    """Does ``text`` hold a date written out: a day and a month name, or a numeric day/month(/year)?"""
    return bool(_WRITTEN_DATE.search(text))


def _day(bound) -> dt.date | None:
    if bound is None or isinstance(bound, dt.date):
        return bound
    try:
        return dt.date.fromisoformat(str(bound))
    except ValueError:
        return None


def _in_range(day: dt.date, low: dt.date | None, high: dt.date | None, said: str = "") -> dt.date:
    """``day``, or the nearest year that puts it in the range when the message said a date but no year:
    a year away when it named none ("Tuesday 31st August", an incident that lies behind, not ahead),
    a century away for a two-digit year ("5/5/95", a date of birth); a four-digit year is kept."""
    def inside(d):
        return (low is None or d >= low) and (high is None or d <= high)

    if inside(day) or re.search(r"\d{4}", said) or not re.search(r"\d", said):
        return day  # a year said is kept, and so is a day said from today ("next Friday")
    two_digit_year = re.search(r"\d{1,2}[/.-]\d{1,2}[/.-]\d{2}\b|'\d{2}\b", said)
    for years in ((-100, 100, -1, 1) if two_digit_year else (-1, 1, -100, 100)):
        try:
            moved = day.replace(year=day.year + years)
        except ValueError:  # 29 February
            continue
        if inside(moved):
            return moved
    return day


_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
_MONTH_AFTER = re.compile(rf"^\s*(?:of\s+)?{_MONTH}\b", re.I)
_MONTH_BEFORE = re.compile(rf"\b{_MONTH}\s*$", re.I)


# a word a model's number follows: capitalised inside a sentence ("Lenovo Yoga Slim 7", "my Pixel 8"),
# or capitalised inside, wherever it stands ("PlayStation 5", "iPhone 15")
_NAME_BEFORE = re.compile(r"(?:(?<=[^.!?:;,\s] )[A-Z][\w-]*|\b[a-zA-Z]*[a-z][A-Z][\w-]*)\s+$")
_COUNTED_AFTER = re.compile(rf"\s*(?:{_PEOPLE_NOUN}|[a-z]+s)\b")  # "Lisbon 2 adults", "Sony 3 photos": counted things


def _in_name(text: str, number: re.Match) -> bool:
    """Is the number part of a thing's name, no count: glued to letters ("Buds2", "WH-1000XM5") or
    after a name's word ("Lenovo Yoga Slim 7", "PlayStation 5", "iPhone 15 Pro"), unless counted
    things follow it ("to Lisbon 2 adults")?"""
    start, end = number.span()
    if start and text[start - 1].isalpha():
        return True
    return bool(_NAME_BEFORE.search(text[max(0, start - 40):start])) and not _COUNTED_AFTER.match(text, end)


def _is_day(text: str, number: re.Match) -> bool:
    """Is this number the day of a date ("6 November", "November 6")? Then it is no count."""
    return bool(_MONTH_AFTER.match(text[number.end():]) or _MONTH_BEFORE.search(text[:number.start()]))


def _other_time(text: str, number: re.Match, wording: str) -> bool:
    """Is this number a span of time ("3 hours") in a unit ``wording`` does not name, or a count of
    people ("3 people") where the wording counts no people (checked bags)?"""
    unit = _TIME_UNIT.match(text, number.end())
    if unit:
        return not re.search(rf"\b{unit.group(1)}s?\b", wording, re.I)
    return bool(wording.strip()) and bool(_PEOPLE_AFTER.match(text, number.end())) and not _PEOPLE_WORDING.search(wording)


def counts(message: str, wording: str | None = None) -> tuple[str, ...]:
    """The numbers ``message`` says as counts, in digits or words ("two of us" -> 2), never a date's
    day nor "one" said for a thing ("book the one on 18 July"); with ``wording`` (what the slot
    counts, its description), never a span of time in a unit the wording does not name ("3 hours
    flying", "one sec" are no party size; "delayed 8 hours" is a delay in hours)."""
    from text_to_num import alpha2digit

    try:
        converted = alpha2digit(_ONE_WAY.sub("single", _A_THING.sub(r"\1\2\3\4 thing", message)), "en", threshold=0)
    except Exception:  # the parser's own failure on odd input is no value
        converted = message
    found = [str(int(m.group())) for m in _DIGITS.finditer(converted)
             if not _is_day(converted, m) and not (wording is not None and _other_time(converted, m, wording))
             and not _in_name(converted, m)]
    if _ALONE.search(message):
        found.append("1")
    if _A_COUPLE.search(message):  # "a couple", "a couple of us": two people, never "a couple of days"
        found.append("2")
    groups = [int(m.group(1)) for m in _PEOPLE_COUNT.finditer(converted)]
    if len(groups) > 1:  # "2 adults and 3 kids": the party is their sum
        found.append(str(sum(groups)))
    companions = len(_COMPANION.findall(message))
    if companions and _SPEAKER.search(message):  # "me and a friend", "my wife and I"
        found.append(str(companions + 1 + sum(groups)))
    return tuple(dict.fromkeys(found))


_ISO_DATE = re.compile(r"(?<![\d/.-])(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})(?![\d/.-]*\d)")
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_AND_DAY = re.compile(  # a weekday and a day of the month, no month named after it
    rf"\b(mon|tue|wed|thu|fri|sat|sun)[a-z]*\.?,?\s+(?:the\s+)?({_ORDINAL_DAY})\b(?!\s*(?:of\s+)?{_MONTH_NAME}|[/.-]\d)",
    re.I)


def _weekday_and_day(said: re.Match, today: dt.date) -> dt.date | None:
    """The first day from ``today`` on that is both the weekday and the day of the month ``said``
    names ("tuesday the 8th" on 1 May 2027: 8 June 2027); None if no month within a year has it."""
    weekday, day = _WEEKDAYS.index(said.group(1).casefold()[:3]), int(re.match(r"\d+", said.group(2)).group())
    year, month = today.year, today.month
    for _ in range(13):
        try:
            when = dt.date(year, month, day)
        except ValueError:
            when = None
        if when is not None and when >= today and when.weekday() == weekday:
            return when
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return None


def _dates(message: str, today: dt.date | None, low: dt.date | None = None, high: dt.date | None = None) -> tuple[str, ...]:
    import dateparser.search

    base = dt.datetime.combine(today or dt.date.today(), dt.time())
    settings = {"RELATIVE_BASE": base, "PREFER_DATES_FROM": "future", "DATE_ORDER": "DMY",
                "RETURN_AS_TIMEZONE_AWARE": False}
    for pattern, said in _RELATIVE:
        message = pattern.sub(said, message)
    message = _ROUND_THE_CLOCK.sub(" ", message)
    found = []
    for written in _ISO_DATE.finditer(message):  # year first ("1986-04-22"): no day-first reading of it
        try:
            found.append((written.group(), dt.datetime(*map(int, written.groups()))))
        except ValueError:
            continue
        message = message.replace(written.group(), " , ")
    for written in _WEEKDAY_AND_DAY.finditer(message):  # "tuesday the 8th": the next 8th that is a Tuesday
        when = _weekday_and_day(written, base.date())
        if when is not None:
            found.append((written.group(), dt.datetime.combine(when, dt.time())))
            message = message.replace(written.group(), " , ")
    for written in _WRITTEN_DATE.finditer(message):  # dates written out are read alone: the search reads
        when = dateparser.parse(written.group(), languages=["en"], settings=settings)  # "the M6 on the 20th
        if when is not None:  # of August" as one date, and misses "3 May" after "the A40"
            found.append((written.group(), when))
            message = message.replace(written.group(), " , ")
    try:
        found += dateparser.search.search_dates(message, languages=["en"], settings=settings) or []
    except Exception:  # the parser's own failure on odd input is no value
        pass
    out = []
    for text, when in found:
        if re.fullmatch(r"\d+", text.strip()):  # a bare number is a count, not a day
            continue
        if not re.search(r"\d", text) and (not _DAY_WORDS.search(text) or _NO_DAY.search(text)):
            continue  # "in April", "some day next month": no day named
        out.append(format_date(_in_range(when.date(), low, high, text)))
    return tuple(dict.fromkeys(out))
