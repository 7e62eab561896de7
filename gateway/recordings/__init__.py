"""Recordings of calls: every Twilio frame with its time (:mod:`.frames`, ``RECORD_CALLS_DIR``), and the call as a
stereo WAV made from that when the call ends (:mod:`.wav`, ``RECORD_AUDIO``)."""
