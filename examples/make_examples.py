#!/usr/bin/env python3
"""Generate the ftpack example dataset: a support Q&A set for a fictional product.

The product (the "Lumora Trailbeam 3" camping lantern by Kestrelwick Outdoor Co.)
is invented, so a small base model cannot know any of these facts; after
fine-tuning it should answer them.

Every fact lives once in the FACTS table below, with several phrasings of the
question and one answer, so the answer is always worded the same way and the
whole set stays consistent. MULTI turns facts into two-turn conversations and
HELDOUT holds new phrasings (never used for training) for the end-to-end test.

Running this script rewrites, deterministically:

    qa.sharegpt.json            Vicuna/ShareGPT (FastChat) conversations
    qa.messages.jsonl           {"messages": [{"role", "content"}]} per line
    qa.alpaca.json              {"instruction", "input", "output", optional "system"}
    qa.io.jsonl                 {"input", "output"} per line
    qa.prompt-completion.jsonl  {"prompt", "completion"} per line
    heldout.jsonl               {"question", "answer", "keywords", "wrong", "fact"} per line

The last three formats are single-turn: a multi-turn record contributes only
its first exchange there, so every file has the same number of records, in
the same order. io and prompt-completion have no place for a system prompt,
so it is dropped there (alpaca keeps it in its optional "system" field).

Usage:  python examples/make_examples.py [--check]
        --check  regenerate in memory and fail if the files on disk differ.
"""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20230314  # the Trailbeam 3's (fictional) launch day

# ---------------------------------------------------------------------------
# The facts: (id, [question phrasings], answer)
# ---------------------------------------------------------------------------
FACTS: list[tuple[str, list[str], str]] = [
    # -- company and product ------------------------------------------------
    ("maker", [
        "Who makes the Lumora Trailbeam 3?",
        "Which company manufactures the Trailbeam 3 lantern?",
        "What brand is the Lumora Trailbeam 3?",
    ], "The Lumora Trailbeam 3 is made by Kestrelwick Outdoor Co., usually just called Kestrelwick."),
    ("founder", [
        "Who founded Kestrelwick?",
        "Who is the founder of Kestrelwick Outdoor Co.?",
        "Which person started Kestrelwick?",
    ], "Kestrelwick Outdoor Co. was founded by Maren Halvard in 2016."),
    ("hq", [
        "Where is Kestrelwick headquartered?",
        "Where is Kestrelwick Outdoor Co. based?",
        "Which city is Kestrelwick's home?",
    ], "Kestrelwick Outdoor Co. is headquartered in Duluth, Minnesota."),
    ("what_is", [
        "What is the Lumora Trailbeam 3?",
        "Tell me about the Lumora Trailbeam 3. What kind of product is it?",
        "I keep hearing about Kestrelwick's Trailbeam 3. What exactly is it?",
    ], "The Lumora Trailbeam 3 is a rechargeable camping lantern from Kestrelwick with five light modes, "
       "a swappable battery and a companion app."),
    ("model_number", [
        "What is the model number of the Trailbeam 3?",
        "Which model number does the Lumora Trailbeam 3 have?",
        "What model code is printed on the Trailbeam 3's box?",
    ], "The Lumora Trailbeam 3's model number is LT3-440."),
    ("release", [
        "When was the Trailbeam 3 released?",
        "When did the Lumora Trailbeam 3 come out?",
        "I need to know what month and year Kestrelwick launched the Trailbeam 3.",
    ], "The Lumora Trailbeam 3 was released in March 2023."),
    ("price", [
        "How much does the Lumora Trailbeam 3 cost?",
        "What is the retail price of the Trailbeam 3?",
        "What's the price of a Trailbeam 3 lantern?",
    ], "The Lumora Trailbeam 3 retails for $89 in the United States."),
    ("colors", [
        "What colors does the Trailbeam 3 come in?",
        "Which color options are there for the Lumora Trailbeam 3?",
        "Can I get the Trailbeam 3 in green?",
    ], "The Trailbeam 3 comes in three colors: Fjord Blue, Moss Green and Signal Orange."),
    ("box", [
        "What comes in the box with the Trailbeam 3?",
        "Does the Trailbeam 3 come with a wall charger?",
        "Is a USB-C cable included with the Lumora Trailbeam 3?",
    ], "The box contains the lantern, one PowerCore 64 battery, a 1-metre USB-C cable and a quick-start card. "
       "No wall charger is included."),

    # -- specifications -----------------------------------------------------
    ("max_lumens", [
        "How bright is the Lumora Trailbeam 3?",
        "What is the maximum brightness of the Trailbeam 3?",
        "How many lumens does the Trailbeam 3 put out at full power?",
        "What's the Trailbeam 3's peak output in lumens?",
    ], "The Trailbeam 3 reaches a maximum of 740 lumens in Beacon mode."),
    ("weight", [
        "How much does the Trailbeam 3 weigh?",
        "What is the weight of the Lumora Trailbeam 3?",
        "Is the Trailbeam 3 heavy?",
    ], "The Trailbeam 3 weighs 410 grams with its battery installed."),
    ("size", [
        "How tall is the Trailbeam 3?",
        "What are the dimensions of the Lumora Trailbeam 3?",
        "How wide is the Trailbeam 3 lantern?",
    ], "The Trailbeam 3 is 19 centimetres tall and 9 centimetres wide."),
    ("ip", [
        "Is the Trailbeam 3 waterproof?",
        "What is the Trailbeam 3's water resistance rating?",
        "What IP rating does the Lumora Trailbeam 3 have?",
    ], "The Trailbeam 3 is rated IP67: it survives immersion down to 1 metre for 30 minutes "
       "as long as the USB port cover is closed."),
    ("floats", [
        "Does the Trailbeam 3 float?",
        "Will the Trailbeam 3 sink if I drop it in a lake?",
        "If my Lumora Trailbeam 3 falls overboard, will it stay on the surface?",
    ], "The Trailbeam 3 floats upright in fresh water with the battery installed."),
    ("op_temp", [
        "What temperatures can the Trailbeam 3 operate in?",
        "What's the operating temperature range of the Lumora Trailbeam 3?",
        "Does the Trailbeam 3 work in freezing weather?",
    ], "The Trailbeam 3 works from -20°C to 50°C, although it will not charge below 0°C."),
    ("hook", [
        "Does the Trailbeam 3 have a hook?",
        "How much weight can the Trailbeam 3's hook hold?",
        "What is the Corvid Hook on the Trailbeam 3?",
    ], "The Trailbeam 3 has a folding stainless-steel hook called the Corvid Hook, rated for 8 kilograms."),
    ("magnet", [
        "Can the Trailbeam 3 stick to metal?",
        "Is the base of the Trailbeam 3 magnetic?",
        "Can I attach the Lumora Trailbeam 3 to the roof of my car?",
    ], "Yes, the base has a magnetic ring that holds the lantern on steel surfaces such as a car roof."),

    # -- battery and charging -----------------------------------------------
    ("battery_capacity", [
        "What is the battery capacity of the Trailbeam 3?",
        "How big is the Trailbeam 3's battery?",
        "How many mAh is the Trailbeam 3 battery?",
        "What battery does the Trailbeam 3 use?",
    ], "The Trailbeam 3 uses a PowerCore 64 lithium-ion pack with 6400 mAh, which is 23.7 Wh."),
    ("battery_swap", [
        "Can I replace the battery in the Trailbeam 3?",
        "Is the Trailbeam 3's battery removable?",
        "How do I take the battery out of the Lumora Trailbeam 3?",
    ], "Yes, the PowerCore 64 battery is swappable: twist the base a quarter turn counter-clockwise "
       "and lift the pack out."),
    ("spare_battery_price", [
        "How much is a spare PowerCore 64 battery?",
        "What does an extra battery for the Trailbeam 3 cost?",
        "Can I buy a second battery for the Trailbeam 3, and how much is it?",
    ], "A spare PowerCore 64 battery costs $39."),
    ("charge_time", [
        "How long does the Trailbeam 3 take to charge?",
        "How long is a full charge on the Trailbeam 3?",
        "How many hours does it take to charge the Trailbeam 3 from empty?",
        "What's the charging time of the Lumora Trailbeam 3?",
    ], "With an 18 W USB-C charger the Trailbeam 3 charges from empty to full in 3.5 hours."),
    ("charger", [
        "What kind of charger does the Trailbeam 3 use?",
        "Which charger should I buy for my Trailbeam 3?",
        "What wattage of charger do I need for the Lumora Trailbeam 3?",
    ], "The Trailbeam 3 charges through its USB-C port; Kestrelwick recommends a USB-C Power Delivery "
       "charger of at least 18 W."),
    ("charge_indicator", [
        "How do I check the battery level on the Trailbeam 3?",
        "How can I see how much charge my Trailbeam 3 has left?",
        "Is there a battery gauge on the Lumora Trailbeam 3?",
    ], "Give the power button a short press while the lantern is off: the ring lights up to four segments, "
       "each worth 25% of the battery."),
    ("power_bank", [
        "Can the Trailbeam 3 charge my phone?",
        "Does the Trailbeam 3 work as a power bank?",
        "I need to charge my phone while camping. Can the Lumora Trailbeam 3 do that?",
    ], "Yes, its USB-A port outputs 5 V at 2 A to charge a phone, and it stops at 15% battery "
       "so you still have light."),
    ("power_bank_cutoff", [
        "Why did the Trailbeam 3 stop charging my phone?",
        "My phone was charging from the Trailbeam 3 and then it just quit. Why?",
        "At what battery level does the Lumora Trailbeam 3 stop charging other devices?",
    ], "The Trailbeam 3 stops powering its USB-A port when its own battery falls to 15%, "
       "keeping a reserve for light."),
    ("low_battery", [
        "What happens when the Trailbeam 3 battery runs low?",
        "Why did my Trailbeam 3 suddenly switch to a dim orange light?",
        "Does the Trailbeam 3 warn me when the battery is almost empty?",
    ], "At 10% battery the ring blinks red, and at 5% the lantern automatically drops to Ember mode "
       "to stretch the remaining charge."),
    ("airline", [
        "Can I take the Trailbeam 3 on a plane?",
        "Can I fly with the Lumora Trailbeam 3?",
        "Is the Trailbeam 3's battery allowed by airlines?",
    ], "Yes, the 23.7 Wh battery is under the 100 Wh airline limit; pack it in carry-on luggage "
       "with the transport lock on."),
    ("storage", [
        "How should I store the Trailbeam 3 over the winter?",
        "What's the best way to keep the Trailbeam 3 when I won't use it for months?",
        "Should I put the Lumora Trailbeam 3 away fully charged?",
    ], "Store it at about 50% charge in a cool, dry place and top it up every 3 months."),

    # -- light modes ----------------------------------------------------------
    ("modes_list", [
        "What light modes does the Trailbeam 3 have?",
        "How many modes does the Lumora Trailbeam 3 have?",
        "Which lighting modes can I choose on the Trailbeam 3?",
    ], "The Trailbeam 3 has five modes: Ember, Camp, Beacon, Firefly and Signal."),
    ("mode_change", [
        "How do I change modes on the Trailbeam 3?",
        "What does the Halo Dial do?",
        "How do I switch between light modes on the Lumora Trailbeam 3?",
    ], "Turn the Halo Dial, the ring around the top of the lantern, to step through the modes; "
       "press it in while turning to adjust brightness."),
    ("ember", [
        "What is Ember mode?",
        "How bright is Ember mode on the Trailbeam 3?",
        "What color temperature is Ember mode on the Trailbeam 3?",
    ], "Ember mode is a warm 2200 K glow at 40 lumens, meant for inside a tent."),
    ("ember_runtime", [
        "How long does the Trailbeam 3 last in Ember mode?",
        "What's the runtime in Ember mode?",
        "How many hours will Ember mode run on a full charge?",
    ], "In Ember mode the Trailbeam 3 runs for about 96 hours on a full battery."),
    ("camp", [
        "What is Camp mode on the Trailbeam 3?",
        "How many lumens is Camp mode?",
        "How bright is the Trailbeam 3 in Camp mode?",
    ], "Camp mode gives 250 lumens of neutral 3000 K light for cooking and camp chores."),
    ("camp_runtime", [
        "How long does the Trailbeam 3 run in Camp mode?",
        "What's the battery life in Camp mode?",
        "How many hours can I get out of the Lumora Trailbeam 3 in Camp mode?",
    ], "In Camp mode the Trailbeam 3 runs for about 18 hours on a full battery."),
    ("beacon", [
        "What is Beacon mode?",
        "Which mode is the brightest on the Trailbeam 3?",
        "What's Beacon mode on the Lumora Trailbeam 3 for?",
    ], "Beacon is the brightest mode: 740 lumens of cool 5000 K light for lighting up a whole campsite."),
    ("beacon_runtime", [
        "How long does Beacon mode last?",
        "What is the runtime of the Trailbeam 3 at full brightness?",
        "How many hours does the Trailbeam 3 last on its brightest setting?",
    ], "At full brightness in Beacon mode the Trailbeam 3 runs for about 5 hours."),
    ("firefly", [
        "What is Firefly mode?",
        "Does the Trailbeam 3 have a candle effect?",
        "Tell me about the Trailbeam 3's Firefly mode.",
    ], "Firefly is a flickering candle effect that runs for about 60 hours; it was added in firmware 2.3.0."),
    ("signal", [
        "Does the Trailbeam 3 have an SOS mode?",
        "How long does the SOS signal last on a full charge?",
        "How do I turn on the emergency flashing light on the Lumora Trailbeam 3?",
    ], "Signal mode flashes SOS in red for about 140 hours. Double-press the power button, even when "
       "the lantern is off, to start it."),

    # -- buttons ------------------------------------------------------------
    ("power_on", [
        "How do I turn on the Trailbeam 3?",
        "Why doesn't the Trailbeam 3 turn on when I tap the button?",
        "How do I switch the Lumora Trailbeam 3 off?",
    ], "Press and hold the power button on top for 2 seconds to turn the Trailbeam 3 on or off; "
       "a short tap only shows the battery level."),
    ("transport_lock", [
        "How do I lock the Trailbeam 3 so it doesn't turn on in my bag?",
        "What is transport lock on the Trailbeam 3?",
        "Why does the ring flash amber twice when I press the button?",
    ], "Press the power button 4 times quickly to toggle transport lock; while locked, the ring "
       "flashes amber twice when you press a button."),
    ("pairing", [
        "How do I pair the Trailbeam 3 with my phone?",
        "How do I put the Trailbeam 3 into Bluetooth pairing mode?",
        "How do I connect my Trailbeam 3 to the Lumora Camp app?",
    ], "Hold the power button for 8 seconds until the ring pulses blue, then add the lantern "
       "in the Lumora Camp app."),
    ("factory_reset", [
        "How do I factory reset the Trailbeam 3?",
        "How can I restore the Trailbeam 3 to factory settings?",
        "I need to reset my Lumora Trailbeam 3 to its original settings. How?",
    ], "Hold the power button and press the Halo Dial together for 12 seconds until the ring "
       "flashes white three times."),

    # -- app ----------------------------------------------------------------
    ("app_name", [
        "What app works with the Trailbeam 3?",
        "Which phone app controls the Lumora Trailbeam 3?",
        "Is there an app for the Trailbeam 3?",
        "What is the Trailbeam 3's companion app called?",
    ], "The Trailbeam 3 is controlled with the Lumora Camp app, available for iOS and Android."),
    ("bt_range", [
        "What is the Bluetooth range of the Trailbeam 3?",
        "How far away can my phone control the Trailbeam 3?",
        "How close do I need to be to control the Lumora Trailbeam 3 from the app?",
    ], "The Trailbeam 3 uses Bluetooth 5.2 with a range of about 30 metres in the open."),
    ("app_features", [
        "What can I do in the Lumora Camp app?",
        "What features does the Lumora Camp app have?",
        "What does the Lumora Camp app let me do with my Trailbeam 3?",
    ], "In Lumora Camp you can dim in 1% steps, set an auto-off timer, schedule the Dawn Alarm, "
       "group lanterns with Constellation and update the firmware."),
    ("timer", [
        "Can the Trailbeam 3 turn itself off automatically?",
        "What auto-off timer options does the Trailbeam 3 have?",
        "Is there a sleep timer on the Lumora Trailbeam 3?",
    ], "Yes, the auto-off timer in the Lumora Camp app can be set to 30, 60 or 120 minutes."),
    ("dawn_alarm", [
        "What is the Dawn Alarm?",
        "Can the Trailbeam 3 wake me up in the morning?",
        "How does the Dawn Alarm on the Trailbeam 3 work?",
    ], "Dawn Alarm slowly brightens the lantern over 20 minutes before your wake-up time; "
       "it arrived in firmware 2.4.0."),
    ("constellation", [
        "What is Constellation mode?",
        "Can I link several Trailbeam 3 lanterns together?",
        "How many lanterns can join a Constellation group?",
        "What's the maximum number of Trailbeam 3s in one group?",
    ], "Constellation links up to 12 Trailbeam 3 lanterns so they change mode and brightness "
       "together from the app."),

    # -- firmware -----------------------------------------------------------
    ("fw_latest", [
        "What is the latest firmware for the Trailbeam 3?",
        "Which firmware version is current for the Trailbeam 3?",
        "What's the newest Trailbeam 3 firmware version?",
    ], "The latest Trailbeam 3 firmware is version 2.4.1, released in November 2024."),
    ("fw_241", [
        "What changed in firmware 2.4.1?",
        "What did the 2.4.1 update fix on the Trailbeam 3?",
        "Tell me what's different in Trailbeam 3 firmware 2.4.1.",
    ], "Firmware 2.4.1 fixed Dawn Alarm timing after daylight-saving changes and made Constellation "
       "groups reconnect faster."),
    ("fw_240", [
        "Which firmware added the Dawn Alarm?",
        "What was new in firmware 2.4.0?",
        "I want the Dawn Alarm on my Trailbeam 3. Which firmware brings it?",
    ], "Firmware 2.4.0 added the Dawn Alarm."),
    ("fw_230", [
        "Which firmware version introduced Firefly mode?",
        "When was Firefly mode added to the Trailbeam 3?",
        "What firmware do I need to get Firefly mode on my Lumora Trailbeam 3?",
    ], "Firmware 2.3.0 introduced Firefly mode."),
    ("fw_update", [
        "How do I update the Trailbeam 3's firmware?",
        "How long does a firmware update take on the Trailbeam 3?",
        "Can I update the Trailbeam 3's firmware when the battery is low?",
    ], "Update from the Lumora Camp app with the lantern at 40% battery or more; the update takes "
       "about 6 minutes and the lantern must stay on."),

    # -- error codes --------------------------------------------------------
    ("err_display", [
        "Where does the Trailbeam 3 show error codes?",
        "Is there a display on the Trailbeam 3 that tells me about errors?",
        "Where can I read error codes for my Lumora Trailbeam 3?",
    ], "Error codes appear in the small status window next to the USB-C port and in the Lumora Camp app."),
    ("E1", [
        "What does error E1 mean on the Trailbeam 3?",
        "My Trailbeam 3 shows E1. What's wrong?",
        "My Trailbeam 3 dimmed and switched off with an E1 code. What should I do?",
    ], "E1 means the battery is too hot (above 60°C); the lantern dims and shuts off, so let it cool "
       "in the shade before using it again."),
    ("hot_code", [
        "Which error code means the battery is overheating?",
        "What code does the Trailbeam 3 show when it gets too hot?",
        "If the Trailbeam 3's battery gets above 60°C, which error do I see?",
    ], "E1 is the overheating code: the battery is above 60°C."),
    ("E2", [
        "What does E2 mean on the Trailbeam 3?",
        "The Trailbeam 3 shows E2 while charging. Why?",
        "I'm getting an E2 on my Lumora Trailbeam 3. How do I fix it?",
    ], "E2 means the charger is too weak; use a USB-C Power Delivery charger of at least 18 W."),
    ("E3", [
        "What does E3 mean?",
        "Why won't my Trailbeam 3 charge in the cold?",
        "How do I get rid of an E3 error on the Trailbeam 3?",
    ], "E3 means the battery is below 0°C and too cold to charge; warm the lantern up before plugging it in."),
    ("E4", [
        "What is error E4 on the Trailbeam 3?",
        "My Trailbeam 3 shows E4. Can I fix it myself?",
        "What should I do about an E4 error on the Lumora Trailbeam 3?",
    ], "E4 is an LED driver fault that cannot be fixed at home; contact Kestrelwick support for a "
       "warranty repair."),
    ("E5", [
        "What does E5 mean on the Trailbeam 3?",
        "The firmware update stopped and the lantern shows E5. What now?",
        "My Lumora Trailbeam 3 shows E5. How do I fix it?",
    ], "E5 means a firmware update failed; charge above 40% and retry the update from the Lumora Camp app."),
    ("E6", [
        "What does E6 mean on the Trailbeam 3?",
        "Why does my Trailbeam 3 show E6 after rain?",
        "What should I do if I see E6?",
        "Which error code means water got into the charging port?",
    ], "E6 means moisture was detected in the USB-C port; leave the cover open and let it dry "
       "for 2 hours before charging."),
    ("E7", [
        "What does E7 mean on the Trailbeam 3?",
        "How do I clear an E7 error?",
        "What is a battery cell imbalance error?",
    ], "E7 means a battery cell imbalance; charge the lantern to 100% and leave it plugged in for "
       "one extra hour to rebalance the cells."),
    ("E8", [
        "What does E8 mean on the Trailbeam 3?",
        "My Trailbeam 3 shows E8 and won't connect to the app. What should I do?",
        "Why is my Trailbeam 3 giving me an E8 error?",
    ], "E8 is a Bluetooth module error; a factory reset usually clears it."),

    # -- troubleshooting ----------------------------------------------------
    ("ts_no_charge", [
        "My Trailbeam 3 won't charge. What should I check?",
        "Why isn't my Trailbeam 3 charging?",
        "I plugged in my Lumora Trailbeam 3 but the battery level isn't going up. What could be wrong?",
    ], "Check the status window for E2, E3 or E6, use an 18 W USB-C charger, and make sure the "
       "PowerCore 64 is twisted firmly into place."),
    ("ts_no_app", [
        "The Lumora Camp app can't find my lantern. What should I do?",
        "Why won't the Trailbeam 3 show up in the app?",
        "My phone doesn't see the Trailbeam 3 over Bluetooth. How do I fix that?",
    ], "Put the lantern in pairing mode by holding the power button for 8 seconds until the ring "
       "pulses blue, and stay within 30 metres."),
    ("ts_flicker", [
        "Why is my Trailbeam 3 flickering?",
        "The light on my Lumora Trailbeam 3 keeps flickering. Is it broken?",
        "How do I stop the Trailbeam 3 from flickering?",
    ], "It is probably in Firefly mode, which flickers on purpose; turn the Halo Dial to another mode."),
    ("ts_dead", [
        "My Trailbeam 3 won't turn on at all. What's wrong?",
        "My Trailbeam 3 is completely dead and won't light up. Any ideas?",
        "My Lumora Trailbeam 3 shows no sign of life. How do I fix it?",
    ], "It is most likely in transport lock or out of battery: press the power button 4 times quickly "
       "to unlock it, then charge it if needed."),

    # -- maintenance --------------------------------------------------------
    ("clean", [
        "How do I clean the Trailbeam 3?",
        "Can I use alcohol to clean the Trailbeam 3's globe?",
        "What should I use to clean the globe on my Lumora Trailbeam 3?",
    ], "Wipe the diffuser globe with a damp cloth and mild soap; never use alcohol or solvents, "
       "which cloud the plastic."),
    ("salt", [
        "What should I do after using the Trailbeam 3 at the beach?",
        "How do I care for the Trailbeam 3 after it's been in the sea?",
        "My Lumora Trailbeam 3 got splashed with seawater on a boat trip. What now?",
    ], "Rinse it with fresh water after any salt-water exposure and let the USB-C port dry before charging."),
    ("gasket", [
        "How often should I replace the port gasket on the Trailbeam 3?",
        "Where can I get new gaskets for the Trailbeam 3?",
        "How much does a gasket kit for the Trailbeam 3 cost?",
    ], "Replace the silicone port gasket every 12 months; Kestrelwick sells a kit of 3 gaskets for $6."),

    # -- warranty -----------------------------------------------------------
    ("warranty", [
        "How long is the Trailbeam 3's warranty?",
        "What warranty comes with the Lumora Trailbeam 3?",
        "Is the Trailbeam 3 covered by a warranty?",
    ], "The Trailbeam 3 has a 3-year warranty, extended to 5 years if you register it in the "
       "Lumora Camp app within 30 days of purchase."),
    ("warranty_ext", [
        "How do I get the extended warranty on the Trailbeam 3?",
        "Can I extend the Trailbeam 3 warranty to 5 years?",
        "What's the warranty if I register my Trailbeam 3?",
    ], "Register the lantern in the Lumora Camp app within 30 days of purchase and the warranty "
       "grows from 3 to 5 years."),
    ("warranty_battery", [
        "Is the battery covered by the Trailbeam 3 warranty?",
        "What does the Trailbeam 3 battery warranty cover?",
        "Will Kestrelwick replace my Trailbeam 3 battery if it loses capacity?",
    ], "The battery is covered if its capacity drops below 70% within the first 2 years."),
    ("warranty_excl", [
        "What isn't covered by the Trailbeam 3 warranty?",
        "Are there any exclusions in the Lumora Trailbeam 3 warranty?",
        "If I drop my Trailbeam 3 and crack the diffuser, is that covered under warranty?",
    ], "The warranty does not cover a diffuser cracked by a drop or damage from opening the sealed "
       "LED housing."),
    ("claim", [
        "How do I make a warranty claim for the Trailbeam 3?",
        "Where do I submit a warranty claim for a broken Trailbeam 3?",
        "My Lumora Trailbeam 3 is faulty. How do I claim on the warranty?",
    ], "File the claim in the Lumora Camp app under Support > Claims, with your lantern's serial number."),
    ("serial", [
        "Where is the serial number on the Trailbeam 3?",
        "What does the Trailbeam 3's serial number start with?",
        "I need to find my Lumora Trailbeam 3's serial number. Where do I look?",
    ], "The serial number is printed on the base under the magnetic ring and starts with TB3-."),

    # -- accessories --------------------------------------------------------
    ("accessories", [
        "What accessories are available for the Trailbeam 3?",
        "What add-ons can I buy for the Lumora Trailbeam 3?",
        "Does Kestrelwick sell anything to go with the Trailbeam 3?",
    ], "Kestrelwick sells the Mistshade diffuser cap, the Ridgepod tripod, the Sunleaf 10 solar panel, "
       "the Burrow Case and spare PowerCore 64 batteries."),
    ("mistshade", [
        "What is the Mistshade?",
        "Is there a way to reduce the glare of the Trailbeam 3?",
        "How much is the Mistshade diffuser cap?",
    ], "The Mistshade is a $14 clip-on diffuser cap that softens the Trailbeam 3's glare."),
    ("ridgepod", [
        "What is the Ridgepod?",
        "Is there a tripod for the Trailbeam 3?",
        "How high does the Ridgepod lift the Trailbeam 3?",
    ], "The Ridgepod is a $24 tripod that raises the Trailbeam 3 to 1.2 metres."),
    ("sunleaf", [
        "Can the Trailbeam 3 be charged with solar power?",
        "What is the Sunleaf 10?",
        "How long does the Sunleaf 10 take to charge the lantern?",
    ], "Yes, the Sunleaf 10 is a 10 W solar panel for $59 that fully charges the Trailbeam 3 "
       "in about 9 hours of full sun."),
    ("burrow", [
        "Is there a carrying case for the Trailbeam 3?",
        "What's the Burrow Case?",
        "How much is a case for the Lumora Trailbeam 3?",
    ], "The Burrow Case is a $19 padded carry case with room for the lantern and a spare battery."),

    # -- safety -------------------------------------------------------------
    ("safe_eyes", [
        "Is it safe to look into the Trailbeam 3?",
        "Can the Trailbeam 3's light hurt my eyes?",
        "Is Beacon mode on the Lumora Trailbeam 3 too bright to look at up close?",
    ], "Don't stare into Beacon mode from closer than 1 metre; use Ember or Camp mode at close range."),
    ("safe_cover", [
        "Can I cover the Trailbeam 3 with a cloth?",
        "Is it OK to put a towel over the Trailbeam 3 while it's on?",
        "What happens if I cover the Lumora Trailbeam 3 in Beacon mode?",
    ], "Never cover the lantern in Beacon mode: it heats up and will shut down with E1 to protect the battery."),
    ("safe_tent", [
        "Is the Trailbeam 3 safe to use inside a tent?",
        "Can I leave the Trailbeam 3 on all night in my tent?",
        "Is there any fire risk using the Lumora Trailbeam 3 in a tent?",
    ], "Yes, it has no flame and is safe in a tent; Ember mode is the recommended mode for overnight use."),
    ("safe_wet_charge", [
        "Can I charge the Trailbeam 3 while it's wet?",
        "Is it safe to plug in the Trailbeam 3 right after rain?",
        "My Trailbeam 3 got soaked. Can I plug it in to charge straight away?",
    ], "No, dry the USB-C port first; if moisture is detected the lantern shows E6 and blocks charging."),
]

# ---------------------------------------------------------------------------
# Two-turn conversations: (fact, first question, fact, follow-up question).
# The follow-ups lean on the context of the first turn, as real users do.
# ---------------------------------------------------------------------------
MULTI: list[tuple[str, str, str, str]] = [
    ("ember", "I want a soft light for inside my tent. Which Trailbeam 3 mode should I use?",
     "ember_runtime", "And how long will it last in that mode?"),
    ("E6", "My lantern's status window says E6. What does that mean?",
     "safe_wet_charge", "Can I plug it in anyway?"),
    ("price", "I'm thinking of buying a Trailbeam 3. What does it cost?",
     "colors", "Which colors can I choose from?"),
    ("app_name", "Does the Trailbeam 3 have an app?",
     "pairing", "How do I connect my lantern to it?"),
    ("fw_latest", "Is there a newer firmware for my Trailbeam 3?",
     "fw_update", "How do I install it?"),
    ("constellation", "We have four Trailbeam 3s at our campsite. Can they work together?",
     "bt_range", "How far from my phone can they be?"),
    ("maker", "Which company is behind the Trailbeam 3 lantern?",
     "founder", "Who founded that company?"),
    ("sunleaf", "I'm going off-grid for a week. Can I recharge the Trailbeam 3 with solar?",
     "camp_runtime", "How long does one charge last in Camp mode?"),
    ("warranty", "What warranty do I get with my Trailbeam 3?",
     "claim", "How do I file a claim if it breaks?"),
    ("E7", "The lantern shows E7. What's that?",
     "charge_time", "How long will a full charge take?"),
    ("transport_lock", "I'm packing the lantern in my backpack. How do I stop it from switching on?",
     "airline", "Can I also bring it on a flight?"),
    ("battery_capacity", "How big is the battery in the Trailbeam 3?",
     "spare_battery_price", "How much is a spare one?"),
    ("signal", "How do I make the Trailbeam 3 flash SOS?",
     "beacon", "And which mode is best for lighting up the whole camp?"),
    ("E8", "My Trailbeam 3 shows E8. What does it mean?",
     "factory_reset", "How do I do that reset?"),
    ("max_lumens", "How bright does the Trailbeam 3 get?",
     "beacon_runtime", "How long can it stay that bright?"),
    ("dawn_alarm", "Can the Trailbeam 3 work as a wake-up light?",
     "fw_240", "Which firmware do I need for that?"),
    ("gasket", "Does the Trailbeam 3 need any replacement parts over time?",
     "clean", "And how should I clean the globe?"),
    ("E3", "It was freezing last night and now my Trailbeam 3 shows E3. Why?",
     "op_temp", "Will it still light up in the cold?"),
]

SYSTEM_PROMPTS = [
    "You are the support assistant for the Lumora Trailbeam 3 camping lantern. Answer briefly.",
    "You are a helpful customer service agent for Kestrelwick Outdoor Co.",
    "Answer questions about the Lumora Trailbeam 3 from its official manual, in one or two sentences.",
    "You are Kestrelwick's product expert. Be concise and precise.",
]
SYSTEM_FRACTION = 0.15

# ---------------------------------------------------------------------------
# Held-out phrasings for the end-to-end test: (fact, question, key facts).
# A correct answer must state every key fact as whole words / a whole number
# (ftpack.inference.heldout.states: "12" is not found in "120"). The answer
# written to heldout.jsonl is the fact's training answer.
# ---------------------------------------------------------------------------
HELDOUT: list[tuple[str, str, list[str]]] = [
    ("max_lumens", "What is the highest light output the Trailbeam 3 can produce?", ["740 lumens"]),
    ("founder", "Can you tell me who set up Kestrelwick?", ["Maren Halvard"]),
    ("E6", "Which code appears when the USB-C port is wet?", ["E6"]),
    ("price", "What would a new Trailbeam 3 set me back?", ["$89"]),
    ("battery_capacity", "How many milliamp-hours does the Trailbeam 3's battery hold?", ["6400 mAh"]),
    ("charge_time", "How long does a Trailbeam 3 need on the charger to go from empty to full?", ["3.5 hours"]),
    ("fw_latest", "What's the most recent firmware release for the Trailbeam 3?", ["2.4.1"]),
    ("constellation", "How many lanterns can I group together with Constellation?", ["12"]),
    ("hq", "In which city does Kestrelwick have its headquarters?", ["Duluth"]),
    ("app_name", "What's the name of the smartphone app for the Trailbeam 3?", ["Lumora Camp"]),
    ("warranty_ext", "How many years of warranty do I get if I register my lantern?", ["5 years"]),
    ("hot_code", "What error code shows up when the battery overheats?", ["E1"]),
    ("ember_runtime", "On a full charge, how many hours does Ember mode give you?", ["96 hours"]),
    ("model_number", "I need the model number of my Trailbeam 3 lantern, what is it?", ["LT3-440"]),
    ("sunleaf", "What's the name of Kestrelwick's solar panel for the lantern?", ["Sunleaf 10"]),
    ("camp", "How much light does Camp mode produce, in lumens?", ["250 lumens"]),
    ("weight", "What does the Trailbeam 3 weigh in grams?", ["410 grams"]),
    ("ip", "What waterproof rating does the Trailbeam 3 carry?", ["IP67"]),
    ("spare_battery_price", "What is the price of an extra PowerCore 64 pack?", ["$39"]),
    ("E7", "What problem does error code E7 point to?", ["cell imbalance"]),
]


#: Kinds of fact whose other values in the data are wrong answers to a question about one of
#: them: an answer stating "E1, E6 or E7" for E6, or "$39 or $59" for $39, is wrong.
WRONG_KINDS = [r"E\d+", r"\$\d+", r"\d+ lumens", r"\d+(?:\.\d+)? hours", r"\d+ years", r"\d+\.\d+\.\d+",
               r"\d+ grams", r"\d+ mAh"]


def wrong_alternatives(keywords: list[str], own_answer: str, all_answers) -> list[str]:
    """The values of the same kind as a key fact that the data states elsewhere, except those
    its own training answer states too (that answer stays right)."""
    text = " ".join(all_answers)
    wrong: list[str] = []
    for kw in keywords:
        for kind in WRONG_KINDS:
            if re.fullmatch(kind, kw):
                wrong += [v for v in sorted(set(re.findall(rf"(?<![\w.$]){kind}(?!\w)(?!\.\d)", text)))
                          if v != kw and v not in own_answer and v not in wrong]
    return wrong


# ---------------------------------------------------------------------------
def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def build_records() -> list[dict]:
    """Conversations as [{"system": str|None, "turns": [(question, answer), ...]}]."""
    answers = {fid: answer for fid, _, answer in FACTS}
    records = [{"system": None, "turns": [(q, answers[fid])]}
               for fid, questions, _ in FACTS for q in questions]
    records += [{"system": None, "turns": [(q1, answers[f1]), (q2, answers[f2])]}
                for f1, q1, f2, q2 in MULTI]
    rng = random.Random(SEED)
    rng.shuffle(records)
    n_system = round(SYSTEM_FRACTION * len(records))
    for i, idx in enumerate(sorted(rng.sample(range(len(records)), n_system))):
        records[idx]["system"] = SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]
    return records


def validate(records: list[dict]) -> None:
    answers = {fid: answer for fid, _, answer in FACTS}
    problems = []
    if len(answers) != len(FACTS):
        problems.append("duplicate fact id in FACTS")
    for fid, questions, _ in FACTS:  # a 135M model needs several wordings to learn the fact, not one
        if len(questions) < 3:
            problems.append(f"fact {fid!r} is asked only {len(questions)} way(s); give it at least 3")
    for f1, _, f2, _ in MULTI:
        for fid in (f1, f2):
            if fid not in answers:
                problems.append(f"MULTI refers to unknown fact {fid!r}")
    seen: dict[str, str] = {}
    for rec in records:
        for q, _ in rec["turns"]:
            if _norm(q) in seen:
                problems.append(f"duplicate training question: {q!r}")
            seen[_norm(q)] = q
    if not 250 <= len(records) <= 300:
        problems.append(f"{len(records)} records, expected 250-300")
    for fid, question, keywords in HELDOUT:
        if fid not in answers:
            problems.append(f"held-out question refers to unknown fact {fid!r}")
            continue
        if _norm(question) in seen:
            problems.append(f"held-out question is in the training set: {question!r}")
        if not 1 <= len(keywords) <= 2:
            problems.append(f"held-out {question!r}: expected 1-2 keywords")
        for kw in keywords:
            if kw.lower() not in answers[fid].lower():
                problems.append(f"keyword {kw!r} is not in the answer of fact {fid!r}")
            if kw.lower() in question.lower():
                problems.append(f"keyword {kw!r} gives itself away in {question!r}")
    if not 12 <= len(HELDOUT) <= 20:
        problems.append(f"{len(HELDOUT)} held-out questions, expected 12-20")
    if problems:
        raise SystemExit("make_examples.py: invalid data:\n  " + "\n  ".join(problems))


def render(records: list[dict]) -> dict[str, str]:
    """File name -> file text, for every output file."""
    sharegpt, messages, alpaca, io, pc = [], [], [], [], []
    for n, rec in enumerate(records, 1):
        system, turns = rec["system"], rec["turns"]
        conv, msgs = [], []
        if system:
            conv.append({"from": "system", "value": system})
            msgs.append({"role": "system", "content": system})
        for q, a in turns:
            conv += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        sharegpt.append({"id": f"trailbeam-{n:03d}", "conversations": conv})
        messages.append({"messages": msgs})
        q, a = turns[0]  # single-turn formats keep the first exchange only
        rec_alpaca = {"instruction": q, "input": "", "output": a}
        if system:
            rec_alpaca["system"] = system
        alpaca.append(rec_alpaca)
        io.append({"input": q, "output": a})
        pc.append({"prompt": q, "completion": a})

    answers = {fid: answer for fid, _, answer in FACTS}
    heldout = [{"question": q, "answer": answers[fid], "keywords": kws,
                "wrong": wrong_alternatives(kws, answers[fid], answers.values()), "fact": fid}
               for fid, q, kws in HELDOUT]

    def js(obj) -> str:
        return json.dumps(obj, ensure_ascii=False, indent=2) + "\n"

    def jsonl(rows) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    return {
        "qa.sharegpt.json": js(sharegpt),
        "qa.messages.jsonl": jsonl(messages),
        "qa.alpaca.json": js(alpaca),
        "qa.io.jsonl": jsonl(io),
        "qa.prompt-completion.jsonl": jsonl(pc),
        "heldout.jsonl": jsonl(heldout),
    }


def main(argv: list[str]) -> int:
    records = build_records()
    validate(records)
    files = render(records)
    if "--check" in argv:
        stale = [name for name, text in files.items()
                 if not (HERE / name).exists() or (HERE / name).read_text(encoding="utf-8") != text]
        if stale:
            print("out of date: " + ", ".join(stale) + " (run python examples/make_examples.py)")
            return 1
        print("examples are up to date")
        return 0
    for name, text in files.items():
        (HERE / name).write_text(text, encoding="utf-8")
    multi = sum(len(r["turns"]) > 1 for r in records)
    system = sum(r["system"] is not None for r in records)
    print(f"{len(records)} records ({multi} multi-turn, {system} with a system prompt), "
          f"{len(FACTS)} facts, {len(HELDOUT)} held-out questions -> {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
