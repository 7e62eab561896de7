"""Audio, the base every layer stands on: the telephone codec and resamplers (:mod:`.convert`), WAV files and the
bundled samples (:mod:`.wavio`). No I/O but files, no import of the rest of the gateway."""
