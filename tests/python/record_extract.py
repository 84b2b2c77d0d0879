#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Record a stream into RACS with racssink and extract it again with racssrc, from Python.

This is an ordinary GStreamer application using PyGObject: the plugin is found like any other
GStreamer plugin (installed system-wide, or through GST_PLUGIN_PATH pointing at the folder that
holds libgstracs.so).

    python3 record_extract.py --host 127.0.0.1 --port 6381 [--stream-id py-demo]

It records 2 s of a 440 Hz sine (S16LE, stereo, 44.1 kHz) with Gst.parse_launch, extracts the
whole stream and then seconds 0.5 to 1.5 with pipelines built by Gst.ElementFactory.make, and
checks the sample counts and that the audio that came back is the audio that went in.
Exit status 0 when everything matched; otherwise 1 with the reason on stderr.
"""

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
from gi.repository import GLib, Gst, GstApp  # noqa: E402,F401  (GstApp: appsink's signals)

RATE = 44100
CHANNELS = 2
BYTES_PER_FRAME = 2 * CHANNELS
SECONDS = 2
SIGNAL = (
    "audiotestsrc wave=sine freq=440 volume=0.5 num-buffers={n} samplesperbuffer=4410 "
    "! audio/x-raw,format=S16LE,rate={rate},channels={ch},layout=interleaved"
).format(n=SECONDS * 10, rate=RATE, ch=CHANNELS)
DEADLINE = 30 * Gst.SECOND


class Failure(Exception):
    pass


def run_to_eos(pipeline, what):
    """Plays `pipeline` until EOS; raises Failure with GStreamer's message on error or timeout."""
    bus = pipeline.get_bus()
    if pipeline.set_state(Gst.State.PLAYING) == Gst.StateChangeReturn.FAILURE:
        msg = bus.timed_pop_filtered(0, Gst.MessageType.ERROR)
        pipeline.set_state(Gst.State.NULL)
        raise Failure("{}: cannot start: {}".format(what, describe(msg)))
    try:
        msg = bus.timed_pop_filtered(DEADLINE, Gst.MessageType.EOS | Gst.MessageType.ERROR)
        if msg is None:
            raise Failure("{}: no EOS within {} s".format(what, DEADLINE // Gst.SECOND))
        if msg.type == Gst.MessageType.ERROR:
            raise Failure("{}: {}".format(what, describe(msg)))
    finally:
        pipeline.set_state(Gst.State.NULL)


def describe(msg):
    if msg is None:
        return "(no error message)"
    err, debug = msg.parse_error()
    return "{} ({})".format(err.message, debug)


def collect(pipeline, appsink, what):
    """Runs a pipeline ending in `appsink` and returns every byte it received."""
    chunks = []

    def on_sample(sink):
        sample = sink.emit("pull-sample")
        buf = sample.get_buffer()
        chunks.append(buf.extract_dup(0, buf.get_size()))
        return Gst.FlowReturn.OK

    appsink.set_property("emit-signals", True)
    appsink.set_property("sync", False)
    appsink.connect("new-sample", on_sample)
    run_to_eos(pipeline, what)
    return b"".join(chunks)


def record(host, port, stream_id):
    # A whole pipeline from a gst-launch-1.0 style description.
    pipeline = Gst.parse_launch(SIGNAL + " ! racssink name=sink")
    sink = pipeline.get_by_name("sink")
    sink.set_property("host", host)
    sink.set_property("port", port)
    sink.set_property("stream-id", stream_id)
    run_to_eos(pipeline, "recording")


def reference():
    pipeline = Gst.parse_launch(SIGNAL + " ! appsink name=out")
    return collect(pipeline, pipeline.get_by_name("out"), "reference signal")


def extract(host, port, stream_id, start_offset=None, duration=None):
    # The same kind of pipeline built element by element.
    pipeline = Gst.Pipeline.new("extract")
    src = Gst.ElementFactory.make("racssrc", "src")
    if src is None:
        raise Failure("no racssrc element: is libgstracs.so in GST_PLUGIN_PATH?")
    sink = Gst.ElementFactory.make("appsink", "out")
    src.set_property("host", host)
    src.set_property("port", port)
    src.set_property("stream-id", stream_id)
    if start_offset is not None:
        src.set_property("start-offset", start_offset)
    if duration is not None:
        src.set_property("duration", duration)
    sink.set_property(
        "caps", Gst.Caps.from_string("audio/x-raw,format=S16LE,rate=44100,channels=2")
    )
    pipeline.add(src)
    pipeline.add(sink)
    if not src.link(sink):
        raise Failure("cannot link racssrc to appsink")
    return collect(pipeline, sink, "extracting")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=6381)
    ap.add_argument("--stream-id", default="py-demo")
    args = ap.parse_args()

    Gst.init(None)
    try:
        record(args.host, args.port, args.stream_id)
        sent = reference()
        print("recorded {} sample frames into '{}'".format(len(sent) // BYTES_PER_FRAME, args.stream_id))

        whole = extract(args.host, args.port, args.stream_id)
        frames = len(whole) // BYTES_PER_FRAME
        print("extracted the whole stream: {} sample frames".format(frames))
        if frames != SECONDS * RATE:
            raise Failure("expected {} sample frames, got {}".format(SECONDS * RATE, frames))
        if whole != sent:
            raise Failure("the extracted audio differs from the recorded audio")

        part = extract(
            args.host, args.port, args.stream_id, start_offset=Gst.SECOND // 2, duration=Gst.SECOND
        )
        frames = len(part) // BYTES_PER_FRAME
        print("extracted seconds 0.5 to 1.5: {} sample frames".format(frames))
        # Accurate to 1 ms (44 sample frames) at each end.
        if abs(frames - RATE) > 88:
            raise Failure("expected about {} sample frames, got {}".format(RATE, frames))
        # The sine repeats exactly every 2205 sample frames, so look for the slice only within
        # 1 ms of where it should start.
        starts = [
            f
            for f in range(RATE // 2 - 44, RATE // 2 + 45)
            if sent[f * BYTES_PER_FRAME : f * BYTES_PER_FRAME + len(part)] == part
        ]
        if not starts:
            raise Failure("seconds 0.5 to 1.5 are not the recorded audio of that time (1 ms accuracy)")
        print("the range starts at sample frame {} (asked {})".format(starts[0], RATE // 2))
    except Failure as e:
        print("error: {}".format(e), file=sys.stderr)
        return 1
    except GLib.Error as e:  # Gst.parse_launch: e.g. no element "racssink"
        print("error: {}".format(e.message), file=sys.stderr)
        return 1
    print("ok: what came back is what went in")
    return 0


if __name__ == "__main__":
    sys.exit(main())
