#!/usr/bin/env bash
# Regenerate the bundled speech samples: espeak-ng -> sox -> mu-law 8 kHz mono WAV (format 7),
# the format a phone line carries. The WAVs are committed, so users need neither tool; run this
# only to change a phrase. Leading and trailing silence is trimmed so that the audio's first and
# last samples are the speech's start and end (the replay phone measures from them).
#
#   usage: gateway/samples/make_samples.sh        (needs espeak-ng and sox: apt-get install espeak-ng sox)
set -euo pipefail
cd "$(dirname "$0")"

AGENT_VOICE="en-us+f3"   # the agent's prompts
CALLER_VOICE="en-us+m3"  # the caller's side
SPEED=165                # words per minute

make() {  # make NAME VOICE "TEXT"
    local name=$1 voice=$2 text=$3 raw trimmed
    raw=$(mktemp --suffix=.wav)
    trimmed=$(mktemp --suffix=.wav)
    espeak-ng -v "$voice" -s "$SPEED" -w "$raw" "$text"
    # Trim silence at both ends (the reverse trick).
    sox "$raw" "$trimmed" silence 1 0.01 0.5% reverse silence 1 0.01 0.5% reverse
    # Band-limit to the telephone band, fade 5 ms in and 10 ms out (no clicks), normalise to -3 dBFS,
    # resample with sox's high-quality (anti-aliased) rate converter, write G.711 mu-law.
    sox "$trimmed" -r 8000 -c 1 -e u-law -b 8 "$name.wav" \
        highpass 200 lowpass 3400 fade q 0.005 -0 0.01 gain -n -3 rate -v 8000
    rm -f "$raw" "$trimmed"
    printf '%-22s %s s  %s\n' "$name.wav" "$(soxi -D "$name.wav")" "$text"
}

make greeting        "$AGENT_VOICE"  "Hello! You are talking to the echo agent. Say something and I will say it back."
make caller_hello    "$CALLER_VOICE" "Hi, I would like to check the status of my order."
make caller_question "$CALLER_VOICE" "Can you tell me when it will arrive?"
make caller_bargein  "$CALLER_VOICE" "Wait, sorry, stop, I have another question."
make caller_goodbye  "$CALLER_VOICE" "Thank you, goodbye."
make one_moment      "$AGENT_VOICE"  "One moment, please."
