"""The audio sets the ASR benchmarks use: the real recordings of
../shared/eval/speech and a longer espeak-ng set with natural pauses."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tests.speech import espeak_pcm, eval_recordings, silence_pcm

__all__ = ["HARVARD", "Clip", "espeak_set", "real_set"]

HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.",
    "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.",
    "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.",
    "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.",
    "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.",
    "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.",
    "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.",
    "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.",
    "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.",
    "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.",
    "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.",
    "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.",
    "What joy there is in living.",
    "A king ruled the state in the early days.",
    "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.",
    "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.",
    "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.",
    "Hop over the fence and plunge in.",
    "The friendly gang left the drug store.",
    "Mesh wire keeps chicks inside.",
    "Trample the spark, else the flames will spread.",
    "The mute muffled the high tones of the horn.",
    "The gold ring fits only a pierced ear.",
    "The old pan was covered with hard fudge.",
    "Watch the log float in the wide river.",
    "The node on the stalk of wheat grew daily.",
    "The heap of fallen leaves was set on fire.",
    "Write fast, if you want to finish early.",
    "His shirt was clean but one button was gone.",
    "The barrel of beer was a brew of malt and hops.",
    "The sky that morning was clear and bright blue.",
    "Torn scraps littered the stone floor.",
    "Sunday is the best part of the week.",
    "Add the sum to the product of these three.",
    "The ripe taste of cheese improves with age.",
    "Act on these orders with great speed.",
    "The hog crawled under the high fence.",
    "Move the vat over the hot fire.",
    "The bark of the pine tree was shiny and dark.",
    "Leaves turn brown and yellow in the fall.",
    "The pennant waved when the wind blew.",
    "Split the log with a quick, sharp blow.",
    "Burn peat after the logs give out.",
    "He ordered peach pie with ice cream.",
    "Weave the carpet on the right hand side.",
    "Hemp is a weed found in parts of the tropics.",
    "A lame back kept his score low.",
    "We find joy in the simplest things.",
    "Type out three lists of orders.",
    "The harder he tried the less he got done.",
    "The boss ran the show with a watchful eye.",
    "The cup cracked and spilled its contents.",
    "Paste can cleanse the most dirty brass.",
    "The slang word for raw whiskey is booze.",
    "It caught its hind paw in a rusty trap.",
    "The wharf could be seen at the farther shore.",
    "Feel the heat of the weak dying flame.",
    "The tiny girl took off her hat.",
    "A cramp is no small danger on a swim.",
    "He said the same phrase thirty times.",
    "Pluck the bright rose without leaves.",
    "Two plus seven is less than ten.",
    "The glow deepened in the eyes of the sweet girl.",
    "Bring your problems to the wise chief.",
    "Write a fond note to the friend you cherish.",
    "Clothes and lodging are free to new men.",
    "We frown when events take a bad turn.",
    "Port is a strong wine with a smoky taste.",
    "The young kid jumped the rusty gate.",
    "Guess the results from the first scores.",
    "A salt pickle tastes fine with ham.",
    "The just claim got the right verdict.",
    "These thistles bend in a high wind.",
    "Pure bred poodles have curls.",
    "The tree top waved in a graceful way.",
    "The spot on the blotter was made by green ink.",
    "Mud was spattered on the front of his white shirt.",
    "The cigar burned a hole in the desk top.",
    "The empty flask stood on the tin tray.",
    "A speedy man can beat this track mark.",
    "A steep trail is painful for our feet.",
    "The child crawled into the dense grass.",
    "Bribes fail where honest men work.",
    "Help the weak to preserve their strength.",
    "A sullen smile gets few friends.",
    "Stop whistling and watch the boys march.",
    "Jerk the cord, and out tumbles the gold.",
    "Slide the tray across the glass top.",
    "The cloud moved in a stately way and was gone.",
    "Light maple makes for a swell room.",
]


@dataclass(frozen=True)
class Clip:
    """Audio (16-bit mono PCM) with its reference text and, for composed
    clips, where each utterance's speech starts and ends (seconds)."""

    name: str
    text: str
    pcm: bytes
    rate: int
    spans: tuple[tuple[float, float], ...] = ()

    @property
    def seconds(self) -> float:
        """Duration."""
        return len(self.pcm) / 2 / self.rate


def real_set() -> list[Clip]:
    """The recordings of the eval folder."""
    return [Clip(r.name, r.text, r.pcm, r.rate) for r in eval_recordings()]


def _speech_span(pcm: bytes, rate: int) -> tuple[float, float]:
    import numpy as np

    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 500)[0]
    if not len(loud):
        return 0.0, 0.0
    return float(loud[0]) / rate, float(loud[-1] + 1) / rate


def espeak_set(
    recordings: int = 24, per_recording: int = 5, seed: int = 7, rate: int = 16000
) -> list[Clip]:
    """Harvard sentences spoken by espeak-ng, joined by 0.6-1.6 s pauses (the first
    ``recordings`` x ``per_recording`` of the list; by default all 120)."""
    if recordings * per_recording > len(HARVARD):
        raise ValueError(f"only {len(HARVARD)} sentences")
    rng = random.Random(seed)
    clips = []
    for r in range(recordings):
        sentences = HARVARD[r * per_recording : (r + 1) * per_recording]
        pcm = silence_pcm(0.5, rate)
        spans = []
        for sentence in sentences:
            speech = espeak_pcm(sentence, rate)
            start, end = _speech_span(speech, rate)
            offset = len(pcm) / 2 / rate
            spans.append((offset + start, offset + end))
            pcm += speech + silence_pcm(rng.uniform(0.6, 1.6), rate)
        clips.append(Clip(f"espeak-{r}", " ".join(sentences), pcm, rate, tuple(spans)))
    return clips


def composed_real_set(gap: float = 1.5) -> list[Clip]:
    """Each real single-utterance recording between silences, with its speech span."""
    clips = []
    for rec in eval_recordings():
        if rec.name.startswith("OSR"):
            continue  # ten sentences in one file: no known per-utterance spans
        lead = silence_pcm(0.5, rec.rate)
        start, end = _speech_span(rec.pcm, rec.rate)
        pcm = lead + rec.pcm + silence_pcm(gap, rec.rate)
        clips.append(Clip(rec.name, rec.text, pcm, rec.rate, ((0.5 + start, 0.5 + end),)))
    return clips
