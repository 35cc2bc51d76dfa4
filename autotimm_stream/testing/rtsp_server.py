#!/usr/bin/python3
"""A real RTSP server for the tests: a live H.264 test pattern from GStreamer's gst-rtsp-server.

Run by Debian's system interpreter (``/usr/bin/python3``), the one with the GObject bindings; stdlib
and ``gi`` only. ``tests/rtsp.py`` starts and controls it. Every client gets its own pipeline (a
shared media answers 503 to a client that reconnects while the previous one is torn down).

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /live --width 320 --height 240

Prints exactly one line, ``READY rtsp://127.0.0.1:PORT/MOUNT``, once the server listens, then serves
until SIGTERM or SIGINT (exit status 0). ``--corrupt P`` mangles each video frame (access unit) with
probability P while the stream goes on: in the default ``--corrupt-mode frame`` the slice headers of
that frame are broken and a few slice bytes flipped, so an FFmpeg client's ``packet.decode()`` fails
with InvalidDataError ("no frame!") and the frames after it miss a reference (concealed, logged only);
``--corrupt-mode bytes`` only flips slice-data bytes, which FFmpeg conceals and merely logs. The RTP
header, SPS, PPS and every other non-slice NAL unit are never touched. ``--seed`` makes the choice of
frames the same for every client.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

LAUNCH = (
    "( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},framerate={fps}/1 "
    "! videoconvert ! x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} "
    "! video/x-h264,profile=baseline ! rtph264pay name=pay0 pt=96 config-interval=1 )"
)
RTP_HEADER = 12
SLICE_TYPES = (1, 5)  # coded slice (non-IDR, IDR): the only NAL units ever touched
FU_A = 28


def payload_offset(rtp: bytes) -> int:
    """Where the RTP payload starts: after the fixed header, the CSRCs and any header extension."""
    off = RTP_HEADER + 4 * (rtp[0] & 0x0F)
    if rtp[0] & 0x10 and len(rtp) >= off + 4:
        off += 4 + 4 * int.from_bytes(rtp[off + 2 : off + 4], "big")
    return off


def locate_slice(rtp: bytes) -> tuple[int | None, int] | None:
    """(where the slice header starts or None, where slice bytes start) in an RTP packet of H.264
    slice data (single NAL unit or FU-A fragment), or None for anything else."""
    off = payload_offset(rtp)
    if len(rtp) <= off + 4:
        return None
    nal = rtp[off] & 0x1F
    if nal == FU_A:
        if rtp[off + 1] & 0x1F not in SLICE_TYPES:
            return None
        return (off + 2 if rtp[off + 1] & 0x80 else None), off + 2  # the start fragment holds the header
    if nal in SLICE_TYPES:
        return off + 1, off + 1
    return None  # SPS, PPS, SEI, AUD, STAP-A: left alone, the stream stays decodable


def broken_header(index: int) -> bytes:
    """Slice-header bytes FFmpeg rejects before it starts a picture ("slice type 32 too large").

    first_mb_in_slice = ``index`` (the slice's rank in its frame) keeps FFmpeg's parser, which starts a
    new access unit where first_mb_in_slice stops growing, splitting packets where it did; then
    slice_type gets five leading zero bits, more than any valid code; then ones. At most 11 zero bits
    in a row: no 00 00 pair, nothing looks like a start code.
    """
    bits = "0" * ((index + 1).bit_length() - 1) + f"{index + 1:b}" + "000001"
    bits += "1" * (-len(bits) % 8)
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def corrupt(rtp: bytes, rng: random.Random, mode: str = "frame", index: int = 0, flips: int = 6) -> bytes | None:
    """A copy of RTP packet ``rtp`` with its H.264 slice data mangled, or None when it carries none.

    ``bytes`` flips a few bytes of the slice data (past the slice header's first bytes): FFmpeg
    conceals the damage and only logs it. ``frame`` also breaks the slice header (``index``: the
    slice's rank in its frame), so the slice is dropped whole; done to every slice of a frame, the
    client's decoder has nothing to decode for that packet ("no frame!", AVERROR_INVALIDDATA).
    """
    where = locate_slice(rtp)
    if where is None:
        return None
    head, body = where
    data = bytearray(rtp)
    if head is not None:
        if mode == "frame":
            header = broken_header(index)
            data[head : head + len(header)] = header
        body = head + 4
    for _ in range(flips if body < len(data) else 0):
        i = rng.randrange(body, len(data))
        data[i] ^= rng.randrange(1, 256)
    return bytes(data)


class Corrupter:
    """A buffer probe on the payloader's src pad that swaps RTP packets for mangled copies.

    Each access unit (one RTP timestamp: one video frame) is picked with the given probability and
    then every slice packet of it is mangled. Buffers seen in a Python probe are not writable (no
    gst-python overrides here), so the mangled copy is pushed downstream from inside the probe and
    the original dropped; the probe lets that reentrant push through untouched.
    """

    def __init__(self, probability: float, mode: str, seed: int | None = None) -> None:
        self.probability = probability
        self.mode = mode
        self.pick = random.Random(seed)  # which frames: depends on nothing but the frame count
        self.rng = random.Random(None if seed is None else f"{seed}/bytes")  # which bytes
        self.local = threading.local()
        self.timestamp = b""
        self.hit = False
        self.slices = 0  # slice headers seen so far in the current frame

    def attach(self, pad: Gst.Pad) -> None:
        pad.add_probe(Gst.PadProbeType.BUFFER | Gst.PadProbeType.BUFFER_LIST, self.probe)

    def probe(self, pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        if getattr(self.local, "pushing", False):
            return Gst.PadProbeReturn.OK
        try:  # an exception here would make PyGObject return 0, which is DROP
            if info.type & Gst.PadProbeType.BUFFER_LIST:
                old = info.get_buffer_list()
                new = [self.mangle(old.get(i)) for i in range(old.length())]
                if all(b is None for b in new):
                    return Gst.PadProbeReturn.OK
                out = Gst.BufferList.new_sized(len(new))
                for i, b in enumerate(new):
                    out.insert(-1, b if b is not None else old.get(i))
                push = pad.push_list
            else:
                out = self.mangle(info.get_buffer())
                if out is None:
                    return Gst.PadProbeReturn.OK
                push = pad.push
        except Exception as e:  # report it and let the packet through untouched
            print(f"rtsp_server: corrupt probe failed: {e!r}", file=sys.stderr, flush=True)
            return Gst.PadProbeReturn.OK
        self.local.pushing = True
        try:
            push(out)
        finally:
            self.local.pushing = False
        return Gst.PadProbeReturn.DROP

    def mangle(self, buf: Gst.Buffer) -> Gst.Buffer | None:
        """A mangled copy of RTP buffer ``buf``, or None to leave it alone."""
        ok, mapped = buf.map(Gst.MapFlags.READ)
        if not ok:
            return None
        try:
            rtp = bytes(mapped.data)
        finally:
            buf.unmap(mapped)
        if len(rtp) < RTP_HEADER:
            return None
        if rtp[4:8] != self.timestamp:  # a new access unit
            self.timestamp = rtp[4:8]
            self.hit = self.pick.random() < self.probability
            self.slices = 0
        if not self.hit:
            return None
        mangled = corrupt(rtp, self.rng, self.mode, self.slices)
        if mangled is None:
            return None
        where = locate_slice(rtp)
        self.slices += where is not None and where[0] is not None
        out = Gst.Buffer.new_wrapped(mangled)
        out.pts, out.dts, out.duration = buf.pts, buf.dts, buf.duration
        out.offset, out.offset_end = buf.offset, buf.offset_end
        out.set_flags(buf.get_flags())
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 (0 is not supported)")
    p.add_argument("--mount", default="/live")
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=240)
    p.add_argument("--fps", type=int, default=25)
    p.add_argument("--gop", type=int, default=0, help="keyframe interval in frames (default: one second)")
    p.add_argument("--corrupt", type=float, default=0.0, help="probability 0..1 that a frame gets mangled")
    p.add_argument(
        "--corrupt-mode",
        choices=("frame", "bytes"),
        default="frame",
        help="frame: slices made undecodable (client decode error); bytes: payload bytes flipped (concealed)",
    )
    p.add_argument("--seed", type=int, default=None, help="seed for --corrupt")
    a = p.parse_args(argv)
    if a.port <= 0:
        p.error("--port must be a free port > 0 (gst-rtsp-server cannot report a kernel-chosen one)")
    if not 0.0 <= a.corrupt <= 1.0:
        p.error("--corrupt must lie in 0..1")
    mount = a.mount if a.mount.startswith("/") else "/" + a.mount

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(a.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH.format(w=a.width, h=a.height, fps=a.fps, gop=a.gop or a.fps))
    factory.set_shared(False)
    if a.corrupt > 0:

        def configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
            pad = media.get_element().get_by_name("pay0").get_static_pad("src")
            Corrupter(a.corrupt, a.corrupt_mode, a.seed).attach(pad)  # one per client: its own sequence

        factory.connect("media-configure", configure)
    server.get_mount_points().add_factory(mount, factory)

    try:  # what gst_rtsp_server_attach() does, but with the reason when the port is taken
        source = server.create_source(None)
    except GLib.Error as e:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{a.port}: {e.message}", file=sys.stderr, flush=True)
        return 1
    source.attach(None)
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_HIGH, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{mount}", flush=True)
    loop.run()
    source.destroy()
    sys.stdout.flush()
    sys.stderr.flush()
    # Streaming threads of connected clients may still be inside the corrupt probe (Python): skip the
    # interpreter's finalisation, which they could block, and leave the kernel to close the sockets.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
