"""Offline substitutes for RULER's qa_1 (SQuAD) and qa_2 (HotpotQA).

SQuAD and HotpotQA cannot be reached offline, so ``qa_1`` / ``qa_2`` here are **synthetic
substitutes**, built to test the same skill with the same prompt template and scoring:

* documents are short encyclopaedia-style paragraphs about *fictional* towns, people, ships,
  mountains and guilds (names are random compounds of ordinary words — "Oakford", "Ada Millward" —
  so the model cannot answer from world knowledge);
* ``qa_1`` (single-hop, SQuAD-like): the question asks one attribute of one entity; one gold
  document among many distractor documents of the same kind;
* ``qa_2`` (two-hop, HotpotQA-like): the question names an entity and asks an attribute of the
  person linked to it (its founder / captain / first climber / first master), or names a person and
  asks an attribute of their birthplace; two gold documents — the bridge entity links them — among
  distractors of every kind.

Answer strings are unique within a prompt (no distractor contains one), and scoring is RULER's
``string_match_part``. Results are reported as "qa_1 / qa_2 (offline substitute)".
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# Names are compounds of ordinary English words ("Oakford", "Ada Millward"): easy to tokenize and
# match, yet random combinations, so no answer can come from world knowledge.
_NAME_PARTS = [
    "Oak",
    "Ash",
    "Elm",
    "Stone",
    "Mill",
    "Bright",
    "Green",
    "Red",
    "Black",
    "White",
    "Cold",
    "Fair",
    "North",
    "South",
    "East",
    "West",
    "King",
    "Bridge",
    "Wolf",
    "Fox",
    "Hawk",
    "Deer",
    "Salt",
    "Iron",
    "Rose",
    "Thorn",
    "Maple",
    "Birch",
    "Willow",
    "Cedar",
    "Pine",
    "Hazel",
    "Briar",
    "Moss",
    "Fern",
    "Clay",
    "Sand",
    "Rock",
    "Glen",
    "Hill",
    "Marsh",
    "Long",
    "High",
    "Low",
    "Swan",
    "Crow",
    "Bell",
    "Wheat",
    "Barley",
    "Apple",
    "Cherry",
    "Frost",
    "Storm",
    "Rain",
    "Sun",
    "Moon",
    "Star",
    "Gold",
    "Silver",
    "Copper",
    "Amber",
    "Lark",
    "Heath",
    "Bram",
    "Dun",
    "Gar",
    "Wyn",
    "Hart",
]
_TOWN_SUFFIXES = [
    "ford",
    "bridge",
    "field",
    "wick",
    "ton",
    "bury",
    "dale",
    "holt",
    "mere",
    "stead",
    "haven",
    "moor",
    "worth",
    "ley",
    "by",
    "thorpe",
    "port",
    "gate",
    "well",
    "wood",
]
_SURNAME_SUFFIXES = ["er", "ley", "ton", "wood", "well", "more", "by", "son", "ford", "ward", "croft", "man", "combe"]
_RIVER_SUFFIXES = ["water", "brook", "run", "flow", "burn"]
_FIRST_NAMES = [
    "Ada",
    "Alma",
    "Anton",
    "Basil",
    "Bertha",
    "Clara",
    "Cyril",
    "Dora",
    "Edgar",
    "Edith",
    "Elias",
    "Elsa",
    "Felix",
    "Flora",
    "Gideon",
    "Greta",
    "Hugo",
    "Ida",
    "Isaac",
    "Jonas",
    "Juno",
    "Konrad",
    "Lena",
    "Lionel",
    "Mabel",
    "Magnus",
    "Nora",
    "Oscar",
    "Otto",
    "Petra",
    "Quentin",
    "Rosa",
    "Rufus",
    "Selma",
    "Silas",
    "Tilda",
    "Tobias",
    "Ursula",
    "Viktor",
    "Wanda",
    "Walter",
    "Yara",
    "Zelda",
    "Oswin",
    "Maren",
    "Leopold",
]
_KINDS = ["town", "village", "market town", "harbour town", "mining town", "river town"]
_SIZES = ["small", "quiet", "busy", "prosperous", "remote", "old"]
_SEASONS = ["spring", "summer", "autumn", "winter"]
_OBJECTS = [
    "Lantern",
    "Heron",
    "Anchor",
    "Bell",
    "Crown",
    "Key",
    "Compass",
    "Kettle",
    "Drum",
    "Feather",
    "Wheel",
    "Harp",
    "Arrow",
    "Candle",
    "Shield",
    "Barrel",
    "Ladder",
    "Ribbon",
    "Mirror",
    "Acorn",
]
_ANIMALS = ["Fox", "Otter", "Badger", "Raven", "Falcon", "Stag", "Hare", "Owl", "Boar", "Heron", "Wolf", "Swan"]
_STRUCTURES = ["Tower", "Bridge", "Gate", "Chapel", "Lighthouse", "Clock", "Windmill", "Fountain", "Arch"]
_FESTIVALS = [
    "Lantern",
    "Kite",
    "Harvest",
    "Ribbon",
    "Candle",
    "Bonfire",
    "Lily",
    "Honey",
    "Drum",
    "Mask",
    "Salmon",
    "Chestnut",
    "Fiddle",
    "Snowdrop",
    "Pumpkin",
    "Feather",
]
_PROFESSIONS = [
    "cartographer",
    "botanist",
    "engineer",
    "composer",
    "physician",
    "astronomer",
    "painter",
    "architect",
    "chemist",
    "historian",
    "sculptor",
    "mathematician",
    "poet",
    "surveyor",
]
_SUBJECTS = [
    "geology",
    "astronomy",
    "medicine",
    "law",
    "music",
    "botany",
    "mathematics",
    "chemistry",
    "architecture",
    "philosophy",
    "navigation",
    "optics",
    "metallurgy",
    "languages",
]
_INSTITUTION_KINDS = ["Academy", "College", "University", "Institute", "Seminary"]
_PETS = ["parrot", "hound", "cat", "horse", "tortoise", "goat", "raven", "pony"]
_SHIP_TYPES = ["schooner", "brigantine", "clipper", "merchant ship", "whaler", "steamer"]
_CARGOES = ["tea", "timber", "wool", "salt", "spices", "coal", "grain", "wine", "copper ore", "silk"]
_CRAFTS = [
    "weavers",
    "glassmakers",
    "clockmakers",
    "bell founders",
    "rope makers",
    "potters",
    "bookbinders",
    "silversmiths",
    "masons",
    "dyers",
]
_BEASTS = ["goat", "eagle", "marmot", "lynx", "ibex", "snow hare", "vulture", "bear"]


def _a(word: str) -> str:
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _compound(rng: random.Random, suffixes: list[str]) -> str:
    return rng.choice(_NAME_PARTS) + rng.choice(suffixes)


class _World:
    """Draws fresh names and values for one prompt; every drawn name is distinct."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def unique(self, make) -> str:
        for _ in range(1000):
            v = make()
            if v not in self.used:
                self.used.add(v)
                return v
        raise RuntimeError("could not draw a unique value")

    def town_name(self) -> str:
        return self.unique(lambda: _compound(self.rng, _TOWN_SUFFIXES))

    def person_name(self) -> str:
        return self.unique(lambda: f"{self.rng.choice(_FIRST_NAMES)} {_compound(self.rng, _SURNAME_SUFFIXES)}")

    def title(self, words_a: list[str], words_b: list[str]) -> str:
        return self.unique(lambda: f"{self.rng.choice(words_a)} {self.rng.choice(words_b)}")


@dataclass
class Doc:
    """One paragraph: its text, the entity it is about, and answerable facts ``{attribute: (question, answers)}``."""

    kind: str
    entity: str
    text: str
    facts: dict
    links: dict = field(default_factory=dict)  # attribute -> name of a linked entity (person or town)


def town(w: _World, name: str | None = None, founder: str | None = None) -> Doc:
    r = w.rng
    name = name or w.town_name()
    founder = founder or w.person_name()
    kind, size, season = r.choice(_KINDS), r.choice(_SIZES), r.choice(_SEASONS)
    region = w.unique(lambda: _compound(r, ["dale", "vale", "glen", "combe"]))
    river = w.unique(lambda: _compound(r, _RIVER_SUFFIXES))
    landmark = w.title(_OBJECTS, _STRUCTURES)
    festival = w.title(_NAME_PARTS, _FESTIVALS)
    text = (
        f"{name} is {_a(size)} {kind} in the valley of {region}. It was founded by {founder}. The {kind} lies "
        f"on the bank of the {river} River, and its best-known landmark is the {landmark}. Every {season} "
        f"{name} holds the {festival} Festival."
    )
    facts = {
        "founder": (f"Who founded {name}?", [founder]),
        "river": (f"On which river does {name} lie?", [f"{river} River", river]),
        "landmark": (f"What is the best-known landmark of {name}?", [landmark]),
        "festival": (f"Which festival does {name} hold every {season}?", [f"{festival} Festival", festival]),
        "region": (f"In which valley is {name}?", [region]),
    }
    return Doc("town", name, text, facts, {"founder": founder})


def person(w: _World, name: str | None = None, birthplace: str | None = None) -> Doc:
    r = w.rng
    name = name or w.person_name()
    birthplace = birthplace or w.town_name()
    pron = r.choice(["he", "she"])
    prof, subject, pet = r.choice(_PROFESSIONS), r.choice(_SUBJECTS), r.choice(_PETS)
    inst = w.unique(lambda: f"{_compound(r, _TOWN_SUFFIXES)} {r.choice(_INSTITUTION_KINDS)}")
    settled = w.town_name()
    pet_name = w.unique(lambda: r.choice(_NAME_PARTS) + r.choice(["y", "ie", "o", "kin", "let"]))
    text = (
        f"{name} was {_a(prof)} born in {birthplace}. {pron.capitalize()} studied {subject} at the {inst} and "
        f"later settled in {settled}. In old age {pron} kept {_a(pet)} named {pet_name}."
    )
    facts = {
        "birthplace": (f"Where was {name} born?", [birthplace]),
        "institution": (f"Where did {name} study {subject}?", [inst]),
        "settled": (f"Where did {name} settle?", [settled]),
        "pet_name": (f"What was the name of the {pet} that {name} kept?", [pet_name]),
    }
    return Doc("person", name, text, facts, {"birthplace": birthplace})


def ship(w: _World, captain: str | None = None) -> Doc:
    r = w.rng
    name = w.title(
        [
            "Silver",
            "Golden",
            "Swift",
            "Northern",
            "Brave",
            "Crimson",
            "Morning",
            "Evening",
            "Wandering",
            "Lucky",
            "Iron",
            "Quiet",
        ],
        _ANIMALS + _OBJECTS,
    )
    captain = captain or w.person_name()
    yard = w.town_name()
    reef = w.unique(lambda: _compound(r, ["rock", "reef", "shoal", "bank"]))
    typ, cargo = r.choice(_SHIP_TYPES), r.choice(_CARGOES)
    text = (
        f"The {name} was {_a(typ)} built in the shipyards of {yard}. Her first captain was {captain}. For many "
        f"years she carried {cargo} along the coast, until she was wrecked on the {reef} reef."
    )
    facts = {
        "captain": (f"Who was the first captain of the {name}?", [captain]),
        "yard": (f"Where was the {name} built?", [yard]),
        "reef": (f"On which reef was the {name} wrecked?", [reef]),
    }
    return Doc("ship", name, text, facts, {"captain": captain})


def mountain(w: _World, climber: str | None = None) -> Doc:
    r = w.rng
    name = "Mount " + w.unique(lambda: _compound(r, ["horn", "peak", "crag", "fell", "top"]))
    climber = climber or w.person_name()
    range_ = w.unique(lambda: _compound(r, ["ridge", "range", "heights"]))
    pass_ = w.unique(lambda: _compound(r, ["gap", "pass", "col", "neck"]))
    beast = r.choice(_BEASTS)
    text = (
        f"{name} rises in the {range_} mountains. It was first climbed by {climber}. The {pass_} crosses its "
        f"northern ridge, and {_a(beast)} is often seen on its slopes."
    )
    facts = {
        "climber": (f"Who first climbed {name}?", [climber]),
        "range": (f"In which mountains does {name} rise?", [range_]),
        "pass": (f"Which pass crosses the northern ridge of {name}?", [pass_]),
    }
    return Doc("mountain", name, text, facts, {"climber": climber})


def guild(w: _World, master: str | None = None) -> Doc:
    r = w.rng
    craft = r.choice(_CRAFTS)
    name = "Guild of the " + w.title(_NAME_PARTS, _OBJECTS)
    master = master or w.person_name()
    hall = w.town_name()
    inn = "the " + w.title(_ANIMALS, _OBJECTS)
    text = (
        f"The {name} is an old guild of {craft} with its hall in {hall}. Its first master was {master}. Every "
        f"year its members meet at the inn called {inn}."
    )
    facts = {
        "master": (f"Who was the first master of the {name}?", [master]),
        "hall": (f"Where does the {name} have its hall?", [hall]),
        "inn": (f"At which inn do the members of the {name} meet?", [inn[4:]]),
    }
    return Doc("guild", name, text, facts, {"master": master})


_KINDS_OF_DOC = (town, person, ship, mountain, guild)
#: the link attribute of each kind that names a person (for two-hop questions)
_PERSON_LINKS = {
    town: ("founder", "the founder of {e}"),
    ship: ("captain", "the first captain of the {e}"),
    mountain: ("climber", "the first person to climb {e}"),
    guild: ("master", "the first master of the {e}"),
}


@dataclass
class QAItem:
    """A question with its gold documents, answers, and a stream of distractor documents."""

    question: str
    answers: list[str]
    gold: list[str]
    world: _World
    kind: str

    def distractors(self, passages=None, fact_share: float = 1.0):
        """Endless distractor paragraphs; none contains an answer string (case-insensitive).

        A share ``fact_share`` are synthetic fact paragraphs of every kind (the gold documents' own
        style); the rest are drawn from ``passages`` (an iterator of prose passages), if given.
        """
        answers = [a.lower() for a in self.answers]
        rng = self.world.rng
        while True:
            if passages is None or rng.random() < fact_share:
                doc = rng.choice(_KINDS_OF_DOC)(self.world).text
            else:
                doc = next(passages)
            if not any(a in doc.lower() for a in answers):
                yield doc


def _single_hop(w: _World) -> QAItem:
    doc = w.rng.choice(_KINDS_OF_DOC)(w)
    attr = w.rng.choice(sorted(doc.facts))
    q, a = doc.facts[attr]
    return QAItem(q, a, [doc.text], w, f"single:{doc.kind}.{attr}")


def _two_hop(w: _World) -> QAItem:
    r = w.rng
    if r.random() < 0.6:  # entity -> linked person -> person's attribute
        make = r.choice(list(_PERSON_LINKS))
        attr_link, phrase = _PERSON_LINKS[make]
        p = person(w)
        first = make(w, **{attr_link: p.entity})
        attr = r.choice(sorted(p.facts))
        who = phrase.format(e=first.entity)
        q = {
            "birthplace": f"Where was {who} born?",
            "institution": f"At which institution did {who} study?",
            "settled": f"Where did {who} settle?",
            "pet_name": f"What was the name of the pet kept by {who}?",
        }[attr]
        a = p.facts[attr][1]
        gold, kind = [first.text, p.text], f"two_hop:{first.kind}.{attr_link}->person.{attr}"
    else:  # person -> birthplace (a town) -> town's attribute
        t = town(w)
        p = person(w, birthplace=t.entity)
        attr = r.choice(["founder", "river", "landmark", "region"])
        where = f"the town where {p.entity} was born"
        q = {
            "founder": f"Who founded {where}?",
            "river": f"On which river lies {where}?",
            "landmark": f"What is the best-known landmark of {where}?",
            "region": f"In which valley is {where}?",
        }[attr]
        a = t.facts[attr][1]
        gold, kind = [t.text, p.text], f"two_hop:person.birthplace->town.{attr}"
    r.shuffle(gold)
    return QAItem(q, a, gold, w, kind)


def make_item(hops: int, rng: random.Random) -> QAItem:
    """A fresh QA item: ``hops=1`` for qa_1 (substitute for SQuAD), ``hops=2`` for qa_2 (for HotpotQA)."""
    w = _World(rng)
    return _single_hop(w) if hops == 1 else _two_hop(w)
