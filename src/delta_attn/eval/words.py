"""Fixed word lists for the RULER-style generators (offline, no `wonderwords` dependency).

RULER draws its NIAH keys as ``adjective-noun`` pairs and its common-words-extraction (cwe) words
from the ``wonderwords`` noun/adjective/verb lists. We ship our own lists of ordinary English words
so that the generators need nothing beyond the tokenizer and give the same samples everywhere.
"""

from __future__ import annotations

ADJECTIVES = sorted(
    set(
        """
able absent acid active actual afraid agile alert alive amber ample ancient angry annual anxious
aquatic arctic ashen awake aware awful bald bare basic bitter black bland blank bleak blind blond
blue blunt bold bored bossy brave brief bright brisk broad broken bronze brown bumpy busy calm
candid careful casual certain cheap cheerful chilly civil clean clear clever close cloudy clumsy
coarse cold common cool copper cozy crazy crisp cruel curly curved cute damp dark dear decent deep
dense dim direct dirty dizzy dry dull dusty eager early easy elastic elder empty endless equal
even exact exotic faint fair fake false famous fancy fast fat fierce final fine firm flat fluffy
fond foolish formal fragile frank free fresh friendly frozen full funny fuzzy gentle giant glad
gloomy glossy golden good grand grateful grave gray greasy great green grim gritty gross grumpy
guilty hairy handy happy hard harsh hasty healthy heavy helpful hidden high hollow holy honest
hot huge humble hungry icy idle ill immense important innocent inner iron itchy jolly juicy keen
kind large late lazy lean legal level light linen little lively local lonely long loose loud
lovely low loyal lucky lunar major marble mature mean meek mellow merry mild minor misty modern
modest moist narrow nasty native neat nervous new nice noble noisy normal odd oily old open
orange ordinary organic outer pale patient plain plastic pleasant plump polite poor popular
precious pretty prime private proud pure purple quick quiet rainy rapid rare raw ready real
regular rich rigid ripe robust rocky rough round royal rude rural rusty sacred sad safe salty
sandy scarce secret serious shaggy sharp shiny short shy silent silky silly silver simple sincere
slim slow small smart smooth snowy soft solar solid sour spare spicy square stable stale steady
steep sticky stiff stormy strange strict strong sturdy subtle sudden sunny super sweet swift tall
tame tasty tender tense thick thin thirsty tidy tight tiny tired tough tragic tropical true
ugly unique upset urban useful vague vast velvet vivid warm wary weak weary wet white whole wicked
wide wild wise witty wooden woolen worried young zealous
""".split()
    )
)

NOUNS = sorted(
    set(
        """
acorn actor airport album anchor angle animal ankle answer apple apron arch arm army arrow artist
attic author avenue baby badge bag bakery ball balloon bamboo banana band bank barn barrel basket
battery beach beam bean bear beard bed bee bell belt bench berry bicycle bird blanket blossom boat
bone book boot bottle boulder bowl box branch bread brick bridge brook broom brush bucket buffalo
building bull butter button cabin cable cactus cake camel camera camp canal candle cannon canoe
canvas canyon captain car card carpet carrot cart castle cat cave cellar chain chair chalk cheese
cherry chest chicken chimney church circle city cliff clock cloud coast coat coconut coffee coin
comet compass cookie copper corn cottage cotton country crayon creek crow crown cup curtain
cushion daisy dancer deer desert desk diamond doctor dog doll dolphin door dragon drawer dress
drum duck eagle earth egg elbow elephant engine falcon farm feather fence ferry field finger fire
fish flag flame flower flute fog forest fork fountain fox frog fruit garage garden gate giraffe
glacier glass glove goat gold guitar hammer harbor hat hawk helmet hill honey horse hospital hotel
house island jacket jar jelly jewel jungle kettle key kitchen kite knife ladder lake lamp lantern
leaf lemon library lighthouse lily lion lizard lobster lock magnet mango map marble market meadow
melon mirror monkey moon mountain mouse mug museum needle nest net novel oak ocean office olive
onion orchard owl oyster paddle painter palace panda paper parrot peach pear pearl pebble pencil
pepper piano pillow pilot pine planet plate plum pocket pond potato puppet pyramid quilt rabbit
radio rain raven ribbon river road robin rocket roof rope rose saddle sailor salmon sand scarf
school scissors shadow sheep shelf shell ship shoe shovel singer sink skull sled snail snake
soldier spider spoon squirrel stable stamp star statue stone storm stove street sugar suitcase
sun swan sword table tail teacher temple tent thunder tiger tomato tower town toy tractor train
tree trumpet tunnel turtle umbrella valley vase village violin volcano wagon wall walnut wand
watch water wheel whistle window wing wizard wolf yacht zebra
""".split()
    )
)

VERBS = sorted(
    set(
        """
accept add admire advise agree allow amuse appear argue arrange arrive ask attach attack attend
bake balance bang bathe battle beg behave belong bleach bless blink boil bolt borrow bounce bow
breathe bruise brush bubble buzz calculate call camp care carry carve cause challenge change
charge chase cheat check cheer chew choke chop claim clap clean clip coach collect comb command
complain complete concern confess connect consider contain continue copy correct cough count
cover crack crash crawl cross crush cry cure curl cycle damage dance dare decide delay deliver
depend describe deserve destroy develop disagree discover dislike divide double doubt drag drain
dream dress drip drop drown dry dust earn educate embarrass employ empty encourage enjoy enter
escape examine excite excuse exercise exist expand expect explain explode extend fade fail fancy
fasten fear fence fetch file fill film fire fit fix flap flash float flood flow fold follow
force form frame frighten gather gaze glow glue grab grate grease greet grin grip groan guarantee
guard guess guide hammer hand handle hang happen harm hate haunt heal heap heat help hook hop hope
hover hug hum hunt hurry identify ignore imagine impress improve include increase inform inject
injure instruct intend interest invent invite iron itch jail jam jog join joke judge juggle jump
kick kill kiss kneel knit knock knot label land last laugh launch learn level license lick lie
lighten like list listen live load lock long look love manage march mark marry match mate matter
measure melt memorize mend milk mine miss mix moan moor mourn move muddle mug multiply murder nail
name need nest nod note notice number obey object observe obtain occur offend offer open order
overflow owe own pack paddle paint park part pass paste pat pause peck pedal peel peep perform
permit phone pick pinch pine place plan plant play please plug point poke polish pop possess post
pour practise pray preach precede prefer prepare present preserve press pretend prevent prick
print produce program promise protect provide pull pump punch puncture punish push question queue
race radiate rain raise reach realise receive recognise record reduce reflect refuse regret reign
reject rejoice relax release rely remain remember remind remove repair repeat replace reply report
reproduce request rescue retire return rhyme rinse risk rob rock roll rot rub ruin rule rush sack
sail satisfy save saw scare scatter scold scorch scrape scratch scream screw scribble scrub seal
search separate serve settle shade share shave shelter shiver shock shop shrug sigh sign signal
sin sip ski skip slap slip slow smash smell smile smoke snatch sneeze sniff snore snow soak soothe
sound spare spark sparkle spell spill spoil spot spray sprout squash squeak squeal squeeze stain
stamp stare start stay steer step stir stitch stop store strap strengthen stretch strip stroke
stuff subtract succeed suck suffer suggest suit supply support suppose surprise surround suspect
suspend switch talk tame tap taste tease telephone tempt terrify test thank thaw tick tickle tie
time tip tire touch tour tow trace trade train transport trap travel treat tremble trick trip trot
trouble trust try tug tumble turn twist type undress unfasten unite unlock unpack untidy use vanish
visit wail wait walk wander want warm warn wash waste watch water wave weigh welcome whine whip
whirl whisper whistle wink wipe wish wobble wonder work worry wrap wreck wrestle wriggle yawn yell
zip zoom
""".split()
    )
)


#: RULER's ``words`` needle keys: ``adjective-noun`` (``len(ADJECTIVES) * len(NOUNS)`` of them).
def niah_key(rng) -> str:
    return f"{rng.choice(ADJECTIVES)}-{rng.choice(NOUNS)}"


#: the ``@hyphen`` prompt format's keys: two different nouns, ``tiger-lamp``.
def noun_pair(rng) -> str:
    first, second = rng.sample(NOUNS, 2)
    return f"{first}-{second}"


#: RULER's cwe vocabulary: nouns + adjectives + verbs, de-duplicated and sorted.
CWE_WORDS = sorted(set(ADJECTIVES) | set(NOUNS) | set(VERBS))
