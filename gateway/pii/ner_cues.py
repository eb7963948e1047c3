"""The words and patterns around a name that the NER step trusts or distrusts (``gateway.pii.ner``):
honorifics and other cues before or after a person's name, and capitalised words that are not names.
"""

from __future__ import annotations

import re

# Person cues. Honorifics count written with a capital, or lower-case with a dot ("ms. Quinzia").
HON = r"Mr|Mrs|Ms|Mx|Miss|Dr|Prof|Sir|Madam|Dame|Lady|Lord|Herr|Frau|Mme|Mlle|Sig|Sig\.ra|Sra|Sr|Srta|Dhr|Mevr|Pan|Pani"
HONORIFIC = rf"(?:(?:{HON})\.?|M\.|(?i:(?:{HON})\.))"
# Before a name, strong enough to make a PERSON of capitalised words spaCy left alone.
BEFORE_STRONG = (
    r"my name is|(?:his|her|their|maiden|first|last|full|sur|given|family) ?name(?: is|\s*[:?])|name\s*:|"
    r"call me|calls me|called me|called|named|dear|hi|hello|signed|sincerely,?|regards,?|"
    r"my (?:kid|son|daughter|child|wife|husband|partner|friend|colleague|boss|mother|father|mom|mum|dad|"
    r"brother|sister)"
)
# Before a name, enough to relabel a name-shaped ORG/GPE/... span as PERSON.
BEFORE_WEAK = (
    r"contact|patient|employee|said|told|asked|ask|tell|thank you|thanks|spoke to|speak to|talk to|"
    r"talked to|spoke with|married|follow up with"
)
AFTER = (
    r"said|says|told|asked|replied|shouted|lives|lived|was born|is born|"
    r"['\u2019]s (?:wife|husband|son|daughter|mother|father|brother|sister|kids?|children|family|birthday|parents)"
)
BEFORE_RE = re.compile(rf"(?:(?<![\w.]){HONORIFIC}|(?i:\b(?:{BEFORE_STRONG}|{BEFORE_WEAK})))[ \t]*$")
STRONG_RE = re.compile(rf"(?:(?<![\w.]){HONORIFIC}|(?i:\b(?:{BEFORE_STRONG})))[ \t]+")
AFTER_RE = re.compile(rf"[ \t]*(?:{AFTER})\b", re.I)
# Not a person cue: "a company called X"; "Cheriton Dr X" (Drive, not Doctor).
THINGS = frozenset(
    {
        "company",
        "business",
        "startup",
        "firm",
        "band",
        "group",
        "city",
        "town",
        "village",
        "place",
        "street",
        "shop",
        "store",
        "restaurant",
        "hotel",
        "app",
        "product",
        "project",
        "tool",
        "brand",
        "ship",
        "book",
        "film",
        "movie",
        "song",
        "album",
        "show",
        "river",
        "lake",
        "country",
    }
)
WORD_BEFORE = re.compile(r"(\w+)[ \t]+$")
WORD = re.compile(r"[^\W\d_][\w'\u2019-]*\.?")
NOT_NAMES = frozenset(
    {
        "I",
        "A",
        "An",
        "The",
        "This",
        "That",
        "These",
        "Those",
        "We",
        "You",
        "He",
        "She",
        "It",
        "They",
        "My",
        "Our",
        "Your",
        "His",
        "Her",
        "Their",
        "There",
        "Here",
        "Thanks",
        "Thank",
        "Hi",
        "Hello",
        "Dear",
        "Please",
        "And",
        "Or",
        "But",
        "Is",
        "Are",
        "Was",
        "What",
        "Who",
        "Why",
        "How",
        "When",
        "Where",
        "Sir",
        "Madam",
        "Customer",
        "Team",
        "All",
        "Everyone",
        "Colleagues",
        "Friends",
        "World",
        "Mr",
        "Mrs",
        "Ms",
        "Mx",
        "Miss",
        "Dr",
        "Prof",
        "Herr",
        "Frau",
        "Mme",
        "Mlle",
    }
)
