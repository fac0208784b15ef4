"""A fixed generic text that tops up an importance matrix when the user's data is small.

Why a fixed text: an importance matrix mostly records which input channels of each
weight carry large activations, and those outlier channels belong to the model, not
to the topic (measured on SmolLM2-135M, shared/FACTS.md: generic prose gave the same
gain as the user's own records). When the user's data renders to fewer tokens than
:data:`ftpack.gguf.imatrix.MIN_TOKENS`, ftpack adds this text so the statistics rest on
enough tokens, and says so (build.json, the model card, the imatrix's dataset list).

It is written for ftpack (no third-party text), mixes registers — narrative prose,
instructions, dialogue, lists, numbers, a little code — and is never used to measure
fidelity (that uses the build's eval split, or :data:`ftpack.inference.fidelity.FIXED_TEXT`).
"""

from __future__ import annotations

#: Label recorded in the imatrix's ``imatrix.datasets`` when this text was used.
GENERIC_TEXT_NAME = "ftpack:generic-calibration-text-v1"

GENERIC_TEXT = """\
The harbour town woke slowly. Fishing boats returned before dawn, their engines low and steady, and by seven o'clock the market stalls along the quay were stacked with ice, crates and chalkboards listing the morning's catch. A baker opened her shutters, a delivery van reversed with a patient beeping, and two children raced their bicycles past the lighthouse, shouting about a seal they had seen near the rocks.

Most visitors arrive by the coastal road, which follows the cliffs for eleven kilometres before dropping into the valley. The road was widened in 1964, resurfaced in 1998 and again in 2017, yet it still closes a few times each winter when storms throw gravel across the bends. Residents keep a shovel in the boot of the car, just in case.

How to make a simple loaf of bread:
1. Mix 500 grams of flour, 10 grams of salt and 7 grams of dried yeast in a large bowl.
2. Add 320 millilitres of lukewarm water and stir until no dry flour remains.
3. Knead the dough on a lightly floured surface for about ten minutes, until it feels smooth and springs back when pressed.
4. Cover the bowl and leave the dough to rise in a warm place for one to two hours, or until it has doubled in size.
5. Shape it into a round, place it on a baking tray and let it rise again for forty minutes.
6. Bake at 220 degrees Celsius for 30 to 35 minutes. The loaf is done when it sounds hollow when tapped underneath.
Let it cool on a rack before slicing; cutting hot bread squashes the crumb.

"Excuse me, is this the right platform for the train to the airport?"
"It is, but you've just missed one. The next leaves in twelve minutes."
"Twelve minutes. Do you know if it stops at the conference centre?"
"Every other one does. Check the screen above the stairs: if it says 'all stations', you're fine."
"Thank you. Sorry, one more question: can I buy a ticket on board?"
"You can, but it costs more. There's a machine by the lift that takes cards."

Photosynthesis is the process by which green plants, algae and some bacteria turn light into chemical energy. In the chloroplasts of a leaf, pigments such as chlorophyll absorb mostly red and blue light and reflect green, which is why leaves look green to us. The absorbed energy splits water molecules, releasing oxygen as a by-product, and drives a chain of reactions that fixes carbon dioxide from the air into sugars. Those sugars feed the plant's growth and, directly or indirectly, almost every other living thing on land. The overall reaction is often summarised as six molecules of carbon dioxide plus six of water, with light, giving one molecule of glucose and six of oxygen.

Dear Ms Alvarez,
Thank you for your letter of 14 March regarding the delayed delivery of your order. I am sorry that the parcel did not arrive on the date we promised. Our records show that it was held at the regional depot because the address label was damaged in transit. We have now printed a new label, and the parcel was dispatched this morning by express courier at no extra cost. You should receive it within two working days. As a gesture of goodwill, we have also added a voucher worth ten percent of your order to your account.
With kind regards,
Customer Service Team

A short history of timekeeping: early societies tracked time with the sun, the moon and the seasons. Sundials divided the day into hours as early as 1500 BC, and water clocks measured intervals at night or under clouds. Mechanical clocks driven by falling weights appeared in European towers in the thirteenth century, though they were often off by fifteen minutes a day. The pendulum clock, described by Christiaan Huygens in 1656, cut that error to seconds. Marine chronometers later let sailors determine longitude at sea, quartz oscillators made accurate watches cheap in the twentieth century, and today atomic clocks define the second itself by the vibrations of caesium atoms: 9,192,631,770 cycles per second.

def average(values):
    \"\"\"Return the arithmetic mean of a non-empty list of numbers.\"\"\"
    if not values:
        raise ValueError("average() needs at least one value")
    return sum(values) / len(values)

print(average([3, 5, 8, 13]))  # prints 7.25

When the function receives an empty list it raises an error instead of dividing by zero, which makes the mistake visible at the point where it happens. Good error messages say what was expected and what was found; a message such as "expected a number, got 'seven'" saves far more time than "invalid input".

Frequently asked questions
Q: How long does the battery last?
A: A full charge lasts about nine hours of normal use, or up to two days in power-saving mode.
Q: Can I charge it overnight?
A: Yes. The charger stops automatically when the battery is full.
Q: What does a blinking orange light mean?
A: The battery is below ten percent. Connect the charger soon.
Q: Is the device waterproof?
A: It resists splashes and light rain, but it should not be submerged.

The committee met on Tuesday to review the budget for the new community library. The architect presented three options. The first kept the existing building and added a glass reading room at the back; the second demolished the old hall and built a two-storey library on the same plot; the third moved the library into the empty school on Mill Street. After a long discussion, members agreed that the first option offered the best balance between cost and space, although several asked for more detail about heating costs in winter. A final vote is expected next month, after a public consultation.

Weather summary for the week: Monday will be mostly cloudy with a high of 14 degrees and a light westerly wind. Showers are likely on Tuesday afternoon, clearing by evening. Wednesday and Thursday look dry and bright, with highs near 17 degrees, but a cold front on Friday brings heavy rain and gusts of up to 60 kilometres per hour along the coast. The weekend should be cooler and calmer, with patchy fog in the valleys on Sunday morning.

Learning a new language as an adult is slower than it is for a child, but adults have advantages too: they can plan, use dictionaries and grammar books, and notice patterns deliberately. Many teachers recommend a mix of approaches. Read simple stories and listen to slow podcasts every day, even for fifteen minutes. Speak as early as possible, even with mistakes. Keep a notebook of useful phrases rather than isolated words, and review it regularly. Above all, find material you actually enjoy, because enjoyment keeps you coming back.

In mathematics, a prime number is a whole number greater than one whose only divisors are one and itself. The first few primes are 2, 3, 5, 7, 11, 13, 17, 19, 23 and 29. Euclid proved more than two thousand years ago that there are infinitely many of them: suppose there were a largest prime, multiply all the primes together and add one, and the result is either prime itself or divisible by a prime not on the list. Either way the list was incomplete. Primes still matter today, because the security of much online communication depends on how hard it is to factor very large numbers into primes.

The old woman at the end of the lane kept bees. Every summer she sold honey from a wooden table by her gate, with an honesty box and a hand-written sign that said "Take a jar, leave three coins, and say hello to the bees on your way past." Nobody ever cheated her, as far as anyone knew. When she grew too frail to lift the hives, the neighbours took turns helping, and by the next spring half the street had learned how to calm a swarm with smoke and patience.

Meeting notes, project kickoff
Attendees: Priya (lead), Tom (backend), Lena (design), Marco (testing)
- Goal: release the first version of the booking app by the end of the quarter.
- Priya will write the requirements document by Friday.
- Tom raised a concern about the payment provider's rate limits; he will contact their support team.
- Lena will share two design directions next Wednesday.
- Marco proposed automated tests for every booking flow before any manual testing starts.
Next meeting: Monday at 10:00.

Rivers shape the land over very long periods. Near its source, a river is usually fast and narrow, cutting a steep V-shaped valley into the rock. Further downstream the slope eases, the channel widens, and the water begins to swing from side to side in loops called meanders. On the outside of each bend the current is faster and erodes the bank; on the inside it slows and drops sand and gravel. Over centuries a meander can be cut off entirely, leaving a curved lake beside the river. Close to the sea, the river slows almost to a stop and deposits the last of its sediment, sometimes building a wide, fertile delta.

"I don't think the plan works," said Sam, pushing the map across the table. "If we leave at six, we reach the pass at noon, and that's exactly when the clouds come in."
"Then we leave at four," Ana replied.
"In the dark?"
"With head torches. The first part of the path is easy. We'll be above the tree line by sunrise."
Sam sighed, then smiled. "Fine. But you're making the coffee."
"""
