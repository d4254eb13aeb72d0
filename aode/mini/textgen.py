"""Per-domain text generators for the miniature corpus (no audio, no espeak-ng).

Every domain is a small template grammar over its own lexicon:

* ``general``: broad read speech (stories and everyday sentences) over ~1,400 word types, the
  "LibriSpeech" of the miniature world;
* ``vctk``: short read prompts (weather, travel, shopping, local news in Scotland);
* ``coraal``: transcript-like conversational talk about family, neighbourhood, school and work
  (contractions, years spelt out);
* ``jl``: a fixed pool of short scripted phrases (``JL_PHRASES``), repeated in many voices;
* ``ne``: news-style read speech (politics, economy, sport, numbers spelt out).

Each target reuses much of the general vocabulary (function words and everyday words): 55-90 %
of its word types and 72-92 % of its running words occur in the general training text
(:func:`vocabulary_overlap`; tests/test_mini_corpus.py holds the band), while its names,
dialect and jargon stay new: hard for a generalist, but not foreign. (Generator 1.1 had a
30-50 % type overlap, which left the targets foreign to a character-CTC model.) Texts are
lowercase words plus apostrophes after :func:`aode.text.normalize_words` (``wrd``); ``wrd_raw`` keeps sentence case and punctuation.

Generation is deterministic: :func:`generate_texts` draws from ``random.Random`` seeded by a
string, which does not depend on ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from collections.abc import Mapping

from aode.text import normalize_words

DOMAINS = ("general", "vctk", "coraal", "jl", "ne")
TARGET_DOMAINS = ("vctk", "coraal", "jl", "ne")

# --------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------
_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_words(n: int) -> str:
    """Spell a non-negative integer in words: 342 -> 'three hundred and forty two'."""
    n = int(n)
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))
    for size, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= size:
            head, rest = divmod(n, size)
            tail = ""
            if rest:
                tail = (" and " if rest < 100 else " ") + number_words(rest)
            return number_words(head) + " " + word + tail
    raise AssertionError(n)


def year_words(year: int) -> str:
    """Spell a year as spoken: 1968 -> 'nineteen sixty eight', 1905 -> 'nineteen oh five'."""
    high, low = divmod(int(year), 100)
    if low == 0:
        return number_words(high) + " hundred"
    return number_words(high) + " " + ("oh " + _ONES[low] if low < 10 else number_words(low))


# --------------------------------------------------------------------------------------
# Lexicons
# --------------------------------------------------------------------------------------
def _w(text):
    return text.split()


def _c(text):
    return [item.strip() for item in text.split(",")]


_IRREGULAR_PLURALS = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "mouse": "mice",
    "goose": "geese",
    "sheep": "sheep",
    "deer": "deer",
    "fish": "fish",
    "wolf": "wolves",
    "knife": "knives",
    "shelf": "shelves",
    "leaf": "leaves",
    "loaf": "loaves",
    "fisherman": "fishermen",
    "potato": "potatoes",
    "tomato": "tomatoes",
    "foot": "feet",
    "tooth": "teeth",
}


def plural(word: str) -> str:
    if word in _IRREGULAR_PLURALS:
        return _IRREGULAR_PLURALS[word]
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    return word + "s"


GENERAL_LEXICON = {
    "name": _w(
        "john mary peter anna thomas sarah james emma henry lucy george alice william clara "
        "robert helen david laura charles rose edward grace arthur jane frank ellen paul martha "
        "samuel ruth walter nora albert ida oliver kate harry molly simon agnes"
    ),
    "person": _w(
        "man woman child boy girl teacher farmer doctor sailor soldier baker painter stranger "
        "neighbor king queen prince princess servant traveler merchant fisherman hunter "
        "shepherd student writer captain driver gardener nurse judge priest miller carpenter "
        "guard widow maid lady gentleman "
        "policeman postman banker clerk lawyer engineer pilot musician singer actor dancer cook waiter mechanic janitor barber preacher worker trader shopper visitor tenant pupil officer reporter manager secretary player coach fan neighbour"
    ),
    "animal": _w(
        "dog cat horse cow sheep pig goat rabbit fox wolf bear deer mouse bird owl crow duck "
        "goose hen fish frog snake bee lion tiger elephant monkey donkey squirrel "
        "camel whale dolphin turtle parrot eagle swan pigeon lamb calf kitten puppy spider beetle butterfly rat"
    ),
    "thing": _w(
        "book letter table chair door window lamp candle key box basket bag coat hat shoe ring "
        "cup plate bowl knife spoon bottle jar clock mirror picture map pen pencil paper rope "
        "ladder bell drum flag stone stick blanket pillow bed boat cart wheel hammer nail "
        "bucket broom coin purse umbrella glove scarf jacket shirt dress boot button needle "
        "kettle pot pan sword shield ship wagon trunk chest drawer shelf fence gate bridge "
        "tower wall roof chimney feather leaf loaf "
        "parcel stamp ticket battery toy tin biscuit snack sandwich sausage radio camera phone computer letterbox newspaper magazine envelope pocket wallet suitcase blanket cushion carpet curtain towel soap brush comb bucket spade saw axe tent torch compass guitar piano violin trumpet ball bat kite puzzle card game bench couch sofa cupboard fridge oven stove sink bathtub mattress helmet badge medal trophy"
    ),
    "place": _w(
        "house garden village town city forest river lake mountain hill valley field farm "
        "road street market shop school church castle palace kitchen cellar attic barn stable "
        "meadow island shore beach harbor station library office hall cottage inn bakery mill "
        "well cave orchard pond path park yard camp "
        "supermarket chemist hospital library theatre stadium airport pool surgery pier factory warehouse hotel cafeteria playground neighbourhood corner alley porch college museum zoo prison court bank cinema restaurant cafe bakery garage hotel farmyard beach harbour highway motorway estate avenue square"
    ),
    "time": _w("morning evening night afternoon day week month year summer winter spring autumn"),
    "weekday": _w("monday tuesday wednesday thursday friday saturday sunday"),
    "meal": _w("breakfast lunch dinner supper"),
    "food": _w(
        "bread soup cheese milk butter cake pie honey tea coffee water rice meat sugar salt "
        "corn beans apples eggs potatoes carrots oranges pears grapes nuts cherries plums "
        "snacks sausages biscuits scones peas crisps chips fish chicken macaroni greens cornbread potatoes yams pudding jam toast porridge lemonade juice stew salad noodles pancakes cookies chocolate sweets"
    ),
    "adj": _w(
        "old young big small tall short long little large heavy light dark bright cold warm "
        "hot wet dry quiet loud soft hard red blue green yellow white black brown gray golden "
        "silver happy sad tired hungry angry kind clever brave proud strange empty full clean "
        "dirty broken new ancient narrow wide deep sharp sweet fresh rich poor busy lazy "
        "gentle wild calm strong weak pretty round thin thick careful curious lonely famous "
        "simple lovely beautiful wooden shiny dusty heavy patient noisy "
        "frozen plastic tinned wonderful dreadful brilliant crowded freezing terrible funny local national public private cheap expensive modern popular serious difficult easy important dangerous safe quick slow nervous excited delighted furious disappointed relieved thrilled friendly honest polite rude clumsy grumpy silly"
    ),
    "feeling": _w("happy sad tired hungry angry proud lonely afraid glad cheerful worried surprised pleased sleepy"),
    "vt": [
        ("see", "saw"),
        ("find", "found"),
        ("take", "took"),
        ("carry", "carried"),
        ("open", "opened"),
        ("close", "closed"),
        ("bring", "brought"),
        ("buy", "bought"),
        ("sell", "sold"),
        ("build", "built"),
        ("break", "broke"),
        ("hold", "held"),
        ("paint", "painted"),
        ("wash", "washed"),
        ("clean", "cleaned"),
        ("fix", "fixed"),
        ("lose", "lost"),
        ("hide", "hid"),
        ("throw", "threw"),
        ("catch", "caught"),
        ("pull", "pulled"),
        ("push", "pushed"),
        ("fill", "filled"),
        ("drop", "dropped"),
        ("lift", "lifted"),
        ("watch", "watched"),
        ("follow", "followed"),
        ("visit", "visited"),
        ("help", "helped"),
        ("meet", "met"),
        ("leave", "left"),
        ("keep", "kept"),
        ("draw", "drew"),
        ("mend", "mended"),
        ("borrow", "borrowed"),
        ("count", "counted"),
        ("cover", "covered"),
        ("choose", "chose"),
        ("forget", "forgot"),
        ("touch", "touched"),
        ("move", "moved"),
        ("give", "gave"),
        ("steal", "stole"),
        ("feed", "fed"),
        ("reject", "rejected"),
        ("approve", "approved"),
        ("welcome", "welcomed"),
        ("oppose", "opposed"),
        ("support", "supported"),
        ("announce", "announced"),
        ("launch", "launched"),
        ("destroy", "destroyed"),
        ("attend", "attended"),
        ("complete", "completed"),
        ("remember", "remembered"),
        ("believe", "believed"),
        ("miss", "missed"),
        ("park", "parked"),
        ("bake", "baked"),
        ("win", "won"),
        ("eat", "ate"),
        ("cook", "cooked"),
        ("scoop", "scooped"),
        ("deliver", "delivered"),
        ("order", "ordered"),
        ("post", "posted"),
        ("repair", "repaired"),
        ("collect", "collected"),
        ("reduce", "reduced"),
        ("increase", "increased"),
        ("cancel", "cancelled"),
        ("delay", "delayed"),
        ("arrest", "arrested"),
        ("sell", "sold"),
        ("tear down", "tore down"),
        ("look after", "looked after"),
        ("pick up", "picked up"),
        ("fetch", "fetched"),
        ("share", "shared"),
        ("check", "checked"),
        ("measure", "measured"),
        ("plant", "planted"),
        ("grow", "grew"),
        ("sew", "sewed"),
    ],
    "vi": _w(
        "walked ran slept laughed cried sang danced waited smiled shouted whispered jumped "
        "climbed rested sat stood arrived returned stayed worked played swam fell hurried "
        "wandered listened prayed "
        "played worked waited laughed slept arrived protested sailed travelled fought complained celebrated cheered screamed trembled hesitated shivered giggled argued struggled recovered"
    ),
    "adv": _w(
        "slowly quickly quietly carefully suddenly softly happily sadly gently loudly "
        "finally again together alone outside nearly patiently proudly "
        "probably still yesterday tonight tomorrow early late soon later recently already almost certainly honestly usually always sometimes"
    ),
    "prep_move": _w("into across through over towards around along past from behind under"),
    "prep_static": _w("in on under near behind beside inside above below"),
    "num": _w("two three four five six seven eight nine ten eleven twelve twenty"),
    "relative": _w(
        "mother father brother sister uncle aunt cousin grandmother grandfather wife husband son daughter friend"
    ),
    "vehicle": _w(
        "car bus train cart wagon boat ship bicycle ferry coach tram taxi flight plane lorry truck van ambulance"
    ),
    "weather": _w("rain snow wind fog storm frost sunshine showers drizzle sleet gales cloud thunder hail mist"),
    "month": _w("january february march april may june july august september october november december"),
    "store": _w("store shop market bakery supermarket chemist newsagent butcher grocer drugstore"),
    "ordinal": _w("first second third fourth fifth sixth seventh eighth ninth tenth last"),
    # Everyday words of public life, work and talk that a broad "LibriSpeech" also holds; the
    # target domains share them, so their own names, dialect and jargon are what stays new.
    "official": _w(
        "council government minister governor senator president chairman mayor committee "
        "police board authority company school ministry hospital union"
    ),
    "news_vt": _w(
        "announced approved rejected welcomed opposed launched suspended declared backed "
        "cancelled delayed supported completed reduced increased"
    ),
    "group": _w(
        "residents workers farmers traders pupils fans shoppers commuters tenants students "
        "campaigners members visitors families parents neighbours youths delegates"
    ),
    "plan": _w(
        "plans budget policy project programme reform scheme bill rules prices road bridge "
        "library stadium footpath bypass"
    ),
    "event": _w("match concert rally wedding festival meeting party parade fair show game race dance service"),
    "emotion": _w("delighted furious disappointed relieved thrilled worried surprised angry pleased upset"),
    "job": _w("mechanic nurse teacher cook janitor driver barber preacher clerk builder cleaner farmer waiter tailor"),
    "workplace": _w(
        "factory hospital warehouse hotel cafeteria shipyard plant office bakery garage mill post office shop school"
    ),
    "pastime": _w("football basketball baseball tag marbles cards chess tennis rugby cricket hopscotch music"),
    "direction": _w("north south east west"),
}
GENERAL_PROPER = set(GENERAL_LEXICON["name"]) | set(GENERAL_LEXICON["weekday"]) | set(GENERAL_LEXICON["month"])

GENERAL_TEMPLATES = [
    "{name} {vt_past} the {adj} {thing} {prep_static} the {place}.",
    "The {adj} {person} {vi} {adv} {prep_move} the {place}.",
    "In the {time}, the {animal} {vi} {prep_move} the {adj} {place}.",
    "{name} said that the {thing} was {adj}.",
    "We {vt_past} {num} {adj} {thing_pl} at the {place}.",
    "Have you seen my {adj} {thing}?",
    "It was a {adj} {time}, and the {person_pl} were {feeling}.",
    "The {thing} {prep_static} the {thing2} belonged to {name}.",
    "{name} and {name2} {vi} {prep_move} the {place} after {meal}.",
    "There was a {adj} {animal} {prep_static} the {place}.",
    "When the {person} {vi}, the {animal} {vi2} {adv}.",
    "{name} wanted to {vt} the {adj} {thing} before {meal}.",
    "The {person_pl} {vt_past} some {food} and {food2} for {meal}.",
    "Please {vt} the {thing} and put it {prep_static} the {thing2}.",
    "My {relative} {vi} {adv} because the {place} was {adj}.",
    "{name} could not {vt} the {thing} because it was too {adj}.",
    "Every {weekday} the {person} {vt_past} the {animal_pl} {prep_static} the {place}.",
    "How many {thing_pl} did {name} {vt}?",
    "The {animal} {vi} {prep_move} the {place} and {vi2} {adv}.",
    "On {weekday} {name} {vt_past} a {adj} {thing} for her {relative}.",
    "The old {person} {vt_past} his {thing} and {vi} home.",
    "Nobody knew why the {thing} was {prep_static} the {place}.",
    "After {meal} the {person_pl} {vi} {prep_move} the {adj} {place}.",
    "I think the {animal} is {feeling} today.",
    "{name} gave the {person} {num} {food}.",
    "The {adj} {thing} was lying {prep_static} the {thing2}.",
    "{name} came back from the {place} with a {adj} {thing}.",
    "I'm going to the {store} with my {relative}.",
    "Why did you leave the {thing} at the {place}?",
    "We are all {feeling} about the {adj} {thing}.",
    "He can't {vt} the {thing} by himself.",
    "Don't {vt} the {thing}, it isn't yours.",
    "The {person_pl} will meet at the {place} tomorrow.",
    "It's too {adj} to walk home tonight, so we'll take the {vehicle}.",
    "{name} was about to {vt} the {thing} when the {animal} {vi}.",
    "They would {vt} the {thing_pl} as soon as the {person} came.",
    "You know, {name} has never been to the {place}.",
    "There were {num} {person_pl} in the {place} that {time}.",
    "{name} counted {bignum} {animal_pl} {prep_static} the {place}.",
    "It happened in the {time} of {year}, when {name} was {num} years old.",
    "The {weather} kept the {person_pl} {prep_static} the {place} all {time}.",
    "In {month} the {person_pl} {vt_past} the {place} again.",
    "The {vehicle} to the {place} was late, but nobody was {feeling}.",
    "Then {name} said that she didn't want to {vt} the {thing}.",
    "What will you {vt} at the {store} this {time}?",
    "We had {bignum} {thing_pl} and only {num} {thing_pl2} left.",
    "The {person} who lived {prep_static} the {place} was {feeling}.",
    "By the {time} they had been {prep_move} the {place} {num} times.",
    "{name} grew up in a {adj} {place} with her {relative_pl}.",
    "The whole family came to the {place} on the {ordinal} day.",
    "Everybody in the {place} was {feeling} to see the {animal}.",
    "{name} got down from the {vehicle} and went to the {place}.",
    "The doctor at the hospital said {name} could go home.",
    "Ask {name} to call the {person} this {time}.",
    "The {person_pl} were expected to arrive before the {weather}.",
    "Each of them could cook, sing and dance.",
    "The government built a new {place} near the {place2}.",
    "About {bignum} people came to the concert in the {place}.",
    "It was the {ordinal} time that {name} had seen the {place}.",
    "The members of the {person} club held a meeting on {weekday}.",
    "The price of {food} rose by {num} cents in {month}.",
    "The {official} has {news_vt} {plan} for a new {place}.",
    "Local {group} {news_vt} the new {place} in {month}.",
    "The {group} were {emotion} with the decision of the {official}.",
    "The {event} was {news_vt} because of the {weather}.",
    "There will be {weather} in the {direction} {adv}.",
    "{weather} will spread across the {direction} later this {time}.",
    "The {vehicle} to the {place} was delayed again.",
    "About {bignum} {group} attended the {event} on {weekday}.",
    "The {official} said the {place} would be completed in {month}.",
    "{name} bought {num} {food} at the {store}.",
    "Please call {name} and ask her to bring {num} {thing_pl}.",
    "We also need a {adj} {thing} for {name}.",
    "My {relative} used to work at the {workplace} for {num} years.",
    "I remember when my {relative} was a {job} at the {workplace}.",
    "We used to play {pastime} in the {place} every {weekday}.",
    "Yeah, I have been living in the {place} since {year}.",
    "You know, back then everybody knew the {job} on our street.",
    "When I was in the {ordinal} grade we had a teacher named {name}.",
    "I was the oldest, so I had to look after my {relative_pl}.",
    "That's when I got the job at the {workplace}.",
    "They tore down the old {place} and built a {place2}.",
    "Prices rose by {num} point {num2} percent in {month}.",
    "The price of {food} fell by {num} percent last {time}.",
    "The {official} earned {bignum} million dollars from the {place}.",
    "Police arrested {num} {person_pl} near the {place} on {weekday}.",
    "The {official} urged {group} to remain calm.",
    "Our team won the {event} by {num} goals to {num2}.",
    "I can't believe you {vt_past} my {thing}.",
    "Stop laughing, the {thing} isn't funny.",
    "We're having {food} and {food2} tonight.",
    "Who {vt_past} my {adj} {thing_pl}?",
    "{name} parked the {vehicle} near the {place}.",
    "Are you going to the {place} today?",
    "Tell {name} the {store} is closed.",
    "{name} lost her {thing_pl} at the {place}.",
    "The weather in the {place} is {adj} this {time}.",
    "{name} {vt_past} {bignum} thousand {thing_pl} last year.",
    "The {person_pl} couldn't wait to finish {ordinal} grade.",
    "Them {person_pl} don't play {pastime} no more.",
    "I think {name} moved to the {place} in {year}.",
    "These things can wait until the weekend.",
    "Tell him to bring us these {thing_pl} from the {store}.",
    "{name} started working at the {workplace} when she was {num}.",
    "We'd sit out on the {place} and talk till late at night.",
    "The kids went to elementary school and then junior high right on our block.",
    "After senior high {name} couldn't wait to graduate from college.",
    "The movie theater and the candy store were right by the shopping center.",
    "Me and my {relative} ate fried {food} in the neighborhood.",
    "The {official} of the state warned {group} about the housing {plan}.",
    "The {official} assured the {group} that prices would not rise next year.",
    "The storm destroyed {num} houses along the coast.",
    "Our team defeated the visitors {num} goals to zero.",
    "{name} could not sleep for {num} hours.",
    "The {event} starts at noon on {weekday}.",
    "Please put the groceries on the {thing}.",
    "The rainbow appeared over the islands after the {weather}.",
    "The speaker said the state lost {num} billion dollars of revenue.",
    "The {vehicle} was packed, so we had to return to the {place}.",
    "{weather} will clear from the {direction} later.",
]

VCTK_LEXICON = {
    "vname": _w("stella fiona hamish morag callum iain kirsty ewan isla angus moira duncan eilidh"),
    "city": _w("glasgow edinburgh aberdeen dundee inverness stirling paisley fife orkney shetland"),
    "region": _w("highlands borders lowlands coast islands glens west east north south"),
    "weather": _w("showers drizzle gales sleet frost fog sunshine snow rain wind cloud"),
    "wverb": _w("spread clear ease linger arrive return"),
    "transport": _w("ferry train tram bus flight coach taxi"),
    "delay": _w("delayed cancelled packed late diverted"),
    "store": _w("supermarket chemist newsagent butcher grocer bakery"),
    "item": _w(
        "spoons peas slabs cheese snacks parcels biscuits crisps scones toys frogs sausages tins stamps batteries"
    ),
    "qadj": _w("fresh thick blue plastic small big tinned frozen"),
    "group": _w("residents tenants pupils campaigners councillors commuters shoppers fans"),
    "civic": _w("council authority board trust"),
    "cverb": _w("approved rejected delayed welcomed opposed backed"),
    "facility": _w("pool surgery library stadium footpath bypass pier theatre"),
    "event": _w("ceilidh match concert rally wedding festival gala meeting"),
    "time": _c("tonight, tomorrow, today, later today, this morning, this evening, this weekend"),
    "num": _w("two three four five six seven eight nine ten"),
    "feeling": _w("delighted furious disappointed relieved thrilled"),
    "eventadj": _w("wonderful dreadful brilliant crowded freezing magic"),
    "pron": _w("her him them us"),
}
VCTK_PROPER = set(VCTK_LEXICON["vname"]) | set(VCTK_LEXICON["city"])
VCTK_TEMPLATES = [
    "Please call {vname}.",
    "Ask {vname} to bring these things from the {store}.",
    "{num} {qadj} {item} from the {store}.",
    "{weather} will {wverb} across the {region} {time}.",
    "The {transport} to {city} was {delay} again.",
    "{vname} bought {num} {item} at the {store}.",
    "There were {num} hundred {group} at the {event}.",
    "The {civic} has {cverb} plans for a new {facility}.",
    "{group} in {city} were {feeling} with the decision.",
    "There may be {weather} in {city} {time}.",
    "The {event} in {city} was {delay} because of the {weather}.",
    "We also need a {qadj} snack for {vname}.",
    "{vname} will meet {pron} at the {facility} {time}.",
    "The {facility} in {city} is {delay} until {time}.",
    "Local {group} {cverb} the new {facility}.",
    "{vname} said the {event} was {eventadj}.",
    "We had {weather} in {city} all week.",
    "The rainbow appeared over the {region} after the {weather}.",
    "She can scoop these things into {num} {qadj} bags.",
    "The {group} {cverb} the {civic} in {city}.",
]

CORAAL_LEXICON = {
    "relative": _w(
        "grandmama granddaddy auntie momma daddy cousin uncle nephew niece stepfather godmother brother sister"
    ),
    "street": _c("georgia, kennedy, rhode island, maple, clinton, jefferson, lincoln, chestnut"),
    "spot": _c(
        "corner store, block, projects, porch, stoop, alley, laundromat, barbershop, carryout, "
        "playground, rec center, neighborhood"
    ),
    "work": _c(
        "plant, factory, post office, navy yard, hospital, cafeteria, warehouse, shipyard, "
        "bus company, department store, hotel"
    ),
    "game": _c("kickball, hopscotch, double dutch, stickball, tag, jacks, marbles, basketball, baseball"),
    "church": _w("baptist methodist pentecostal holiness"),
    "churchword": _c("choir, revival, usher board, bible study, youth group"),
    "grade": _w("first second third fourth fifth sixth seventh eighth ninth tenth"),
    "school": _c("elementary school, junior high, senior high, high school, college"),
    "city": _w("washington atlanta rochester detroit baltimore princeville valdosta harlem"),
    "food": _c("greens, cornbread, fried chicken, ribs, sweet potato pie, macaroni, fish"),
    "building": _c("movie theater, skating rink, candy store, drugstore, pool hall, projects"),
    "newthing": _c("parking lot, condos, gas station, shopping center, highway"),
    "surname": _w("johnson williams brown jackson harris robinson walker coleman"),
    "title": _w("mrs mr miss"),
    "job": _c("mechanic, nurse, teacher, cook, janitor, bus driver, barber, preacher"),
    "num": _w("two three four five six ten fifteen twenty thirty"),
    "weekday": _w("sunday saturday friday"),
    "year": [year_words(y) for y in range(1948, 1996, 3)],
}
CORAAL_PROPER = (
    set(CORAAL_LEXICON["street"])
    | set(CORAAL_LEXICON["city"])
    | set(CORAAL_LEXICON["surname"])
    | set(CORAAL_LEXICON["weekday"])
    | set(CORAAL_LEXICON["title"])
    | {"baptist", "methodist", "pentecostal", "bible"}
)
CORAAL_TEMPLATES = [
    "I grew up on {street} street right by the {spot}.",
    "My {relative} used to work at the {work} for {num} years.",
    "We used to go to {church} church every Sunday with my {relative}.",
    "When I was in the {grade} grade we had a teacher named {title} {surname}.",
    "You know back then everybody knew everybody on the block.",
    "My {relative} would cook {food} on {weekday} and the whole family came over.",
    "I went to {school} and then I started working at the {work}.",
    "We'd play {game} out in the street till the streetlights came on.",
    "It wasn't like that when I was coming up.",
    "They tore down the {building} and built a {newthing}.",
    "I think my {relative} moved to {city} in {year}.",
    "My {relative} was a {job} and my {relative2} stayed home with us.",
    "We didn't have much but we had each other.",
    "Me and my {relative} would walk to the {spot} after school.",
    "Yeah, I been living in {city} since {year}.",
    "My {relative} sang in the {churchword} for {num} years.",
    "Them kids don't go outside and play {game} no more.",
    "I remember when the {building} opened up on {street} avenue.",
    "My {relative} ain't never left {city}, still living there.",
    "We'd sit on the {spot} and talk till late at night.",
    "I was the oldest so I had to look after my {relative}.",
    "That's when I got the job at the {work}.",
    "Y'all probably don't remember the {building}.",
    "Everybody in the {spot} knew my {relative}.",
    "I couldn't wait to graduate from {school}.",
]

# The JL-like pool: short scripted phrases, said again and again in many voices with
# strong emotion-like prosody. Splits share the phrases by design (they differ only in
# voice and prosody), as the scripted sentences of the JL corpus do.
JL_PHRASES = [
    "Carl leaps into a jeep.",
    "Tom can't sleep in the attic.",
    "He will sail to Vanuatu soon.",
    "Jake parked the car near the kiwi farm.",
    "Are you going to Queenstown today?",
    "I'm not going back to Rotorua.",
    "Please put the groceries on the bench.",
    "Aroha baked a pavlova for the hui.",
    "The jandals are in the chilly bin.",
    "Why did you leave the ute at the bach?",
    "Sam took the dog to Piha beach.",
    "We missed the ferry to Waiheke.",
    "My flatmate ate all the feijoas.",
    "Don't touch the hangi yet.",
    "Mere found her togs under the couch.",
    "That was a sweet as concert.",
    "The tramp took us seven hours.",
    "Hemi won the rugby tickets.",
    "Tell Nikau the dairy is closed.",
    "Who nicked my gumboots?",
    "The lolly scramble starts at noon.",
    "We're having fish and chips tonight.",
    "Kiri lost her keys at the wharf.",
    "Stop laughing, it isn't funny.",
    "The weather in Wellington is terrible.",
    "I can't believe you did that, cuz.",
]

NE_LEXICON = {
    "state": _w(
        "lagos kano kaduna ogun oyo enugu anambra delta edo plateau borno benue kwara osun "
        "imo abia ekiti katsina sokoto"
    ),
    "ncity": _w("abuja ibadan jos zaria onitsha warri calabar maiduguri ilorin owerri"),
    "team": _c(
        "enyimba, kano pillars, rangers, sharks, heartland, remo stars, sunshine stars, "
        "shooting stars, kwara united, plateau united"
    ),
    "office": _w("governor senator minister chairman commissioner president speaker"),
    "body": _c("senate, house of assembly, ministry, tribunal, committee, electoral commission"),
    "policy": _w("budget bill policy reform programme initiative"),
    "gverb": _w("announced approved inaugurated commissioned launched suspended unveiled"),
    "sayverb": _w("urged condemned declared warned assured appealed"),
    "project": _c("road, hospital, bridge, rail line, water scheme, housing estate, power plant, airport"),
    "commodity": _w("cassava yam maize cocoa groundnut rice petrol diesel cement sorghum"),
    "econ": _w("inflation unemployment revenue exports imports"),
    "trend": _w("rose fell increased dropped"),
    "month": _w("january february march april may june july august september october november december"),
    "group": _w("traders farmers youths workers residents stakeholders delegates"),
    "party": _c("ruling party, opposition, coalition"),
    "weekday": _w("monday tuesday wednesday thursday friday saturday sunday"),
}
NE_PROPER = (
    set(NE_LEXICON["state"])
    | set(NE_LEXICON["ncity"])
    | set(NE_LEXICON["month"])
    | set(NE_LEXICON["weekday"])
    | {
        "enyimba",
        "pillars",
        "rangers",
        "sharks",
        "heartland",
        "remo",
        "stars",
        "sunshine",
        "shooting",
        "kwara",
        "united",
        "nigeria",
        "kano",
    }
)
NE_TEMPLATES = [
    "Government has {gverb} {money} for the {project} in {state}.",
    "{team} defeated {team2} {score} in {ncity}.",
    "{econ} {trend} to {pct} percent in {month}.",
    "The {office} of {state} state has {gverb} a new {project}.",
    "Members of the {party} met in {ncity} on {weekday}.",
    "The price of {commodity} {trend} by {pct} percent.",
    "The {body} has {gverb} the {policy} for {year}.",
    "The {office} {sayverb} {group} in {state} state to remain calm.",
    "{group} in {ncity} protested over the price of {commodity}.",
    "Nigeria earned {money} from crude oil in {month}.",
    "The {office} said the {project} will be completed in {month}.",
    "About {count} {group} attended the rally in {ncity}.",
    "{team} will play {team2} in {ncity} next {weekday}.",
    "The {body} {gverb} {money} to support {group}.",
    "Heavy rain destroyed {count} houses in {state} state.",
    "The {office} {sayverb} that the {policy} would reduce {econ}.",
    "{econ} in {state} state {trend} by {pct} percent last year.",
    "Police in {ncity} arrested {count} suspects on {weekday}.",
]


def _money(rng):
    amount = rng.choice([rng.randint(2, 99), rng.randint(1, 9) * 100])
    unit = rng.choice(["million", "billion"])
    return f"{number_words(amount)} {unit} naira"


def _pct(rng):
    return f"{number_words(rng.randint(1, 40))} point {_ONES[rng.randint(0, 9)]}"


def _score(rng):
    winner = rng.randint(1, 5)
    loser = rng.randint(0, winner - 1)
    return f"{number_words(winner)} goal{'s' if winner > 1 else ''} to {number_words(loser)}"


def _count(rng):
    return number_words(rng.choice([rng.randint(20, 99), rng.randint(1, 9) * 100, rng.randint(1, 12) * 1000]))


_SLOT = re.compile(r"\{([a-z_]+?)(_past|_pl)?(\d*)\}")


def _general_slot(name, suffix, rng):
    lex = GENERAL_LEXICON
    if name == "bignum":
        return number_words(rng.choice([rng.randint(13, 99), rng.randint(1, 9) * 100, rng.randint(100, 999)]))
    if name == "year":
        return year_words(rng.randint(1800, 1950))
    if name == "vt":
        base, past = rng.choice(lex["vt"])
        return past if suffix == "_past" else base
    if name == "vi":
        return rng.choice(lex["vi"])
    word = rng.choice(lex[name])
    return plural(word) if suffix == "_pl" else word


def _lexicon_slot(lexicon, extra):
    def slot(name: str, suffix: str, rng: random.Random) -> str:
        if name in extra:
            return extra[name](rng)
        word = rng.choice(lexicon[name])
        return plural(word) if suffix == "_pl" else word

    return slot


def _fill(template, slot_fn, rng):
    used = {}

    def sub(match: re.Match[str]) -> str:
        name, suffix, index = match.group(1), match.group(2) or "", match.group(3)
        for _ in range(20):  # {name2} differs from {name}
            value = slot_fn(name, suffix, rng)
            if index == "" or value not in used.get(name, ()):
                break
        used.setdefault(name, set()).add(value)
        return value

    text = _SLOT.sub(sub, template)
    text = re.sub(r"\b([Aa]) (?=[aeiou])", lambda m: m.group(1) + "n ", text)
    return text


def _sentence_case(text, proper):
    words = text.split(" ")
    out = []
    for word in words:
        core = word.strip(".,?!")
        if core == "i" or core.startswith("i'") or core.lower() in proper:
            word = word[:1].upper() + word[1:]
        out.append(word)
    text = " ".join(out)
    return text[:1].upper() + text[1:]


_EXTRA = {
    "vctk": {},
    "coraal": {},
    "ne": {
        "money": _money,
        "pct": _pct,
        "count": _count,
        "score": _score,
        "year": lambda rng: year_words(rng.randint(2019, 2026)),
    },
}
_GRAMMARS = {
    "general": (GENERAL_TEMPLATES, _general_slot, GENERAL_PROPER),
    "vctk": (VCTK_TEMPLATES, _lexicon_slot(VCTK_LEXICON, _EXTRA["vctk"]), VCTK_PROPER),
    "coraal": (CORAAL_TEMPLATES, _lexicon_slot(CORAAL_LEXICON, _EXTRA["coraal"]), CORAAL_PROPER),
    "ne": (NE_TEMPLATES, _lexicon_slot(NE_LEXICON, _EXTRA["ne"]), NE_PROPER),
}


def make_sentence(domain: str, rng: random.Random) -> str:
    """One raw sentence (sentence case, punctuation) of ``domain`` drawn with ``rng``."""
    if domain == "jl":
        return rng.choice(JL_PHRASES)
    templates, slot_fn, proper = _GRAMMARS[domain]
    text = _fill(rng.choice(templates), slot_fn, rng)
    return _sentence_case(text, proper)


# Longest sentence (in words) per domain, so that utterances stay within ~1.5-5 s at the
# domain's speaking rate (ne is read slowly, coraal fast).
MAX_WORDS = {"general": 13, "vctk": 12, "coraal": 14, "jl": 12, "ne": 12}


def generate_texts(
    domain: str,
    count: int,
    seed: int | str = 0,
    exclude: Iterable[str] = (),
    max_words: int | None = None,
    min_words: int = 3,
) -> list[str]:
    """``count`` raw sentences of ``domain``, unique (except ``jl``), deterministic in ``seed``.

    ``exclude`` holds normalised texts (``wrd``) that must not be produced. ``jl`` draws from
    its fixed phrase pool with replacement, cycling through the pool in a shuffled order so
    that every phrase is used about equally often.
    """
    rng = random.Random(f"aode-mini/{seed}/{domain}/text")
    if domain == "jl":
        out = []
        while len(out) < count:
            pool = list(JL_PHRASES)
            rng.shuffle(pool)
            out.extend(pool)
        return out[:count]
    max_words = max_words or MAX_WORDS.get(domain, 14)
    seen = set(exclude)
    out = []
    tries = 0
    while len(out) < count:
        tries += 1
        if tries > 200 * count + 1000:
            raise RuntimeError(f"the {domain} grammar produced only {len(out)} unique sentences of {count}")
        raw = make_sentence(domain, rng)
        wrd = normalize_words(raw)
        if wrd in seen or not (min_words <= len(wrd.split()) <= max_words):
            continue
        seen.add(wrd)
        out.append(raw)
    return out


def plan_texts(counts: Mapping[str, Mapping[str, int]], seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """Texts for every domain and split: ``{domain: {split: [raw, ...]}}``.

    ``counts`` is ``{domain: {split: n}}``. Within a domain all splits are drawn together as one
    unique set, so no text occurs in two splits (``jl`` excepted, by design).
    """
    plan = {}
    for domain, splits in counts.items():
        total = sum(splits.values())
        texts = generate_texts(domain, total, seed=seed)
        plan[domain] = {}
        start = 0
        for split, n in splits.items():
            plan[domain][split] = texts[start : start + n]
            start += n
    return plan


def word_types(texts: Iterable[str]) -> set[str]:
    return {w for t in texts for w in normalize_words(t).split()}


def vocabulary_overlap(target_texts: Iterable[str], general_texts: Iterable[str]) -> dict[str, float]:
    """How much of a target's vocabulary the general text covers.

    Returns ``types`` (share of the target's word types that occur in the general text),
    ``tokens`` (share of the target's running words whose type occurs there), and the
    type counts.
    """
    general = word_types(general_texts)
    target_tokens = [w for t in target_texts for w in normalize_words(t).split()]
    target = set(target_tokens)
    shared = target & general
    return {
        "types": len(shared) / max(1, len(target)),
        "tokens": sum(w in general for w in target_tokens) / max(1, len(target_tokens)),
        "target_types": len(target),
        "shared_types": len(shared),
        "general_types": len(general),
    }
