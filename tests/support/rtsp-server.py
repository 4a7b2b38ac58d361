#!/usr/bin/python3
"""Test RTSP server: serves one MP4 (H.264) at rtsp://127.0.0.1:PORT/stream.

Usage: /usr/bin/python3 rtsp-server.py PORT FILE
Prints "READY <port>" on stdout once listening. The media is shared (every
client sees the same live stream, and a client that reconnects gets it
again) and loops the file, so it behaves like a camera. Exits on SIGINT or
when the process that started it goes away, so a crashed test run leaves
nothing behind. SIGTERM is ignored: bun test's dangling-process killer
SIGTERMs every process a test file started, those of its beforeAll hooks
included, when a timer it believes stale fires (oven-sh/bun#38774, #39657),
and a server shared by the tests of a file must outlive that.
"""
import os
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: rtsp-server.py PORT FILE", file=sys.stderr)
        return 2
    port, path = sys.argv[1], os.path.abspath(sys.argv[2])
    if not os.path.isfile(path):
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    Gst.init(None)
    loop = GLib.MainLoop()

    factory = GstRtspServer.RTSPMediaFactory()
    location = path.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! qtdemux name=demux ! h264parse name=parse config-interval=-1 '
        f"! rtph264pay name=pay0 pt=96 config-interval=-1 )"
    )
    factory.set_shared(True)
    factory.connect("media-configure", lambda _f, media: loop_media(media))

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    server.get_mount_points().add_factory("/stream", factory)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{port}", file=sys.stderr)
        return 1

    parent = os.getppid()

    def orphaned() -> bool:
        if os.getppid() != parent:
            loop.quit()
            return False
        return True

    GLib.timeout_add(500, orphaned)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, lambda: loop.quit() or False)
    print(f"READY {server.get_bound_port()}", flush=True)
    loop.run()
    return 0


def loop_media(media: GstRtspServer.RTSPMedia) -> None:
    """Turns end of file into a seek back to the start, so the stream never ends.

    The flushing seek restarts the file's timestamps at 0; to keep the RTP
    timestamps increasing (clients cap fps and sync on them), the flush stays
    between demuxer and parser and the parser's output is shifted by the time
    already played.
    """
    bin_ = media.get_element()
    demux, parse = bin_.get_by_name("demux"), bin_.get_by_name("parse")
    if demux is None or parse is None:
        return
    out = parse.get_static_pad("src")
    # end: running time reached in this pass; offset: time played in earlier passes;
    # rewinding: the flush in flight is ours (the server's own seeks must flush downstream).
    state = {"end": 0, "offset": 0, "rewinding": False}

    def rewind() -> bool:
        state["offset"] += state["end"]
        state["end"] = 0
        state["rewinding"] = True
        out.set_offset(state["offset"])
        demux.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
        return False

    def on_data(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if info.type & Gst.PadProbeType.BUFFER:
            buf = info.get_buffer()
            if buf.pts != Gst.CLOCK_TIME_NONE:
                dur = buf.duration if buf.duration != Gst.CLOCK_TIME_NONE else 0
                state["end"] = max(state["end"], buf.pts + dur)
            return Gst.PadProbeReturn.OK
        kind = info.get_event().type
        if kind == Gst.EventType.EOS:
            GLib.idle_add(rewind)
            return Gst.PadProbeReturn.DROP
        if kind in (Gst.EventType.FLUSH_START, Gst.EventType.FLUSH_STOP):
            if state["rewinding"]:
                if kind == Gst.EventType.FLUSH_STOP:
                    state["rewinding"] = False
                return Gst.PadProbeReturn.DROP
            # A seek by the server restarts running time: start counting afresh.
            if kind == Gst.EventType.FLUSH_STOP:
                state["offset"] = state["end"] = 0
                out.set_offset(0)
        return Gst.PadProbeReturn.OK

    out.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.EVENT_DOWNSTREAM | Gst.PadProbeType.EVENT_FLUSH, on_data)


if __name__ == "__main__":
    sys.exit(main())
