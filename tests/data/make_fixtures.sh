#!/bin/sh
# Regenerates the WAV fixtures in this directory (espeak-ng 1.51, sox 14.4). See README.md.
set -e
cd "$(dirname "$0")"
say() {  # say NAME "TEXT": espeak-ng writes 22.05 kHz mono 16-bit; sox resamples to 16 kHz (-D: no dither, repeatable)
    espeak-ng -v en-us -s 165 -w "/tmp/$1.22k.wav" "$2"
    sox -D "/tmp/$1.22k.wav" -r 16000 -c 1 -b 16 "$1.wav"
    rm "/tmp/$1.22k.wav"
}
say fox "The quick brown fox jumps over the lazy dog."
say student "I am a student."
say attention "Attention is all you need."
say stella "Please call Stella and ask her to bring these things with her from the store."
say long "The weather is nice today. We went to the park in the morning. My sister likes to read books about history. The train leaves at seven o'clock every evening. Can you help me carry these boxes to the car? He drinks a cup of coffee before work. The children are playing in the garden. It is time to go home. I like green apples."
sox -D student.wav -r 8000 student_8k.wav
